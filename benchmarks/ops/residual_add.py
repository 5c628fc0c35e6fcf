"""``--op residual_add``: x + residual, memory-bound (reads x and residual, writes out)."""

from __future__ import annotations

import torch

import kernels
from benchmarks.suite import Case, SuiteConfig, compiled, probe, suite, timed_closure


@suite("residual_add")
def cases(config: SuiteConfig):
    sizes = [(4096, 1024)] if config.quick else [(8192, 1024), (32768, 4096), (65536, 8192)]
    if config.device.type == "cpu" and not config.quick:
        sizes = [(8192, 1024), (16384, 4096)]
    for rows, hidden in sizes:
        x = torch.randn(rows, hidden, device=config.device, dtype=config.dtype)
        residual = torch.randn_like(x)
        element = x.element_size()
        for mode in ("fwd",):
            def eager():
                return timed_closure(lambda: x + residual, [x, residual], mode)

            def torch_compile():
                add = compiled(lambda a, b: a + b)
                return timed_closure(lambda: add(x, residual), [x, residual], mode)

            def ours(backend):
                def setup():
                    call = lambda: kernels.residual_add(x, residual, backend=backend)  # noqa: E731
                    probe(call)
                    return timed_closure(call, [x, residual], mode)
                return setup

            yield Case(
                op="residual_add", mode=mode, shape={"rows": rows, "hidden": hidden}, dtype=config.dtype,
                device=config.device, bytes=3 * rows * hidden * element,
                providers={"eager": eager, "torch.compile": torch_compile, "triton": ours("triton"),
                           "native": ours("native")},
            )
