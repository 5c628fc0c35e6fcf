"""``--op layer_norm`` and ``--op rms_norm``: memory-bound, forward, backward and both, plain and fused "Add & Norm".

Bytes (performance.md: each input read once, each output written once):
* forward: x, weight (and bias), y, the fp32 statistics (mean and rstd, rstd only for RMS norm); Add & Norm also
  reads residual and writes h;
* backward: x (h), dy, weight, the statistics, dx, dweight (and dbias); Add & Norm also reads dh;
* forward+backward: the sum.
Peers: eager (``x + residual`` then ``F.layer_norm`` / ``F.rms_norm``), torch.compile of the same, and apex's
FusedLayerNorm / FusedRMSNorm and Liger's LigerLayerNorm / LigerRMSNorm when installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from benchmarks.suite import Case, SuiteConfig, Unavailable, compiled, probe, suite, timed_closure

EPS = 1e-5


def _sizes(config: SuiteConfig):
    if config.quick:
        return [(4096, 1024)]
    if config.device.type == "cpu":
        return [(8192, 1024), (2048, 4096)]
    return [(32768, hidden) for hidden in (768, 1024, 2048, 4096, 8192)] + [(8192, 16384)]


def _bytes(mode, rows, hidden, element, rms, residual):
    params = (1 if rms else 2) * hidden * element
    stats = (1 if rms else 2) * rows * 4
    tensor = rows * hidden * element
    forward = 2 * tensor + params + stats + (2 * tensor if residual else 0)
    backward = 3 * tensor + params + stats + params + (tensor if residual else 0)
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


def _peer_module(name, op, hidden, weight, bias, device, dtype):
    """apex or Liger's module with our parameters, or Unavailable."""
    try:
        if name == "apex":
            from apex.normalization import FusedLayerNorm, FusedRMSNorm

            module = FusedLayerNorm(hidden, eps=EPS) if op == "layer_norm" else FusedRMSNorm(hidden, eps=EPS)
        else:
            from liger_kernel.transformers import LigerLayerNorm, LigerRMSNorm

            module = LigerLayerNorm(hidden, eps=EPS) if op == "layer_norm" else LigerRMSNorm(hidden, eps=EPS)
    except ImportError as error:
        raise Unavailable(f"{name} is not installed ({error})") from error
    module = module.to(device=device, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None and getattr(module, "bias", None) is not None:
            module.bias.copy_(bias)
    return module


def _case(op, rows, hidden, residual_on, mode, device, dtype) -> Case:
    """One case; every provider builds its own inputs in its setup (nothing is allocated until it runs)."""
    rms = op == "rms_norm"

    def make_inputs():
        grad = mode != "fwd"
        x = torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=grad)
        residual = torch.randn_like(x, requires_grad=grad) if residual_on else None
        weight = torch.rand(hidden, device=device, dtype=dtype).add_(0.5).requires_grad_(grad)
        bias = None if rms else torch.randn(hidden, device=device, dtype=dtype, requires_grad=grad)
        return x, residual, weight, bias, [t for t in (x, residual, weight, bias) if t is not None]

    def eager_fn(x, residual, weight, bias):
        h = x if residual is None else x + residual
        y = F.rms_norm(h, (hidden,), weight, EPS) if rms else F.layer_norm(h, (hidden,), weight, bias, EPS)
        return y if residual is None else (y, h)

    def eager():
        x, residual, weight, bias, inputs = make_inputs()
        return timed_closure(lambda: eager_fn(x, residual, weight, bias), inputs, mode)

    def torch_compile():
        fn = compiled(eager_fn)
        x, residual, weight, bias, inputs = make_inputs()
        return timed_closure(lambda: fn(x, residual, weight, bias), inputs, mode)

    def ours(backend):
        def setup():
            x, residual, weight, bias, inputs = make_inputs()
            if rms:
                call = lambda: kernels.rms_norm(x, hidden, weight, EPS, residual=residual,  # noqa: E731
                                                backend=backend)
            else:
                call = lambda: kernels.layer_norm(x, hidden, weight, bias, EPS, residual=residual,  # noqa: E731
                                                  backend=backend)
            probe(call)
            return timed_closure(call, inputs, mode)
        return setup

    def peer(name):
        def setup():
            x, residual, weight, bias, inputs = make_inputs()
            module = _peer_module(name, op, hidden, weight.detach(), None if bias is None else bias.detach(),
                                  device, dtype)

            def forward():
                h = x if residual is None else x + residual
                return module(h) if residual is None else (module(h), h)
            return timed_closure(forward, inputs, mode)
        return setup

    return Case(
        op=op, mode=mode, shape={"rows": rows, "hidden": hidden}, dtype=dtype, device=device,
        bytes=_bytes(mode, rows, hidden, torch.empty(0, dtype=dtype).element_size(), rms, residual_on),
        label="add&norm" if residual_on else "",
        providers={"eager": eager, "torch.compile": torch_compile, "triton": ours("triton"), "native": ours("native"),
                   "apex": peer("apex"), "liger": peer("liger")},
    )


def _cases(op: str, config: SuiteConfig):
    for rows, hidden in _sizes(config):
        for residual_on in (False, True):
            for mode in config.modes:
                yield _case(op, rows, hidden, residual_on, mode, config.device, config.dtype)


@suite("layer_norm")
def layer_norm_cases(config: SuiteConfig):
    return _cases("layer_norm", config)


@suite("rms_norm")
def rms_norm_cases(config: SuiteConfig):
    return _cases("rms_norm", config)
