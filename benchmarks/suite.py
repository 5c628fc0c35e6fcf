"""What an op's benchmark suite declares: cases, each with the providers to time side by side.

An op's suite lives in ``benchmarks/ops/<op>.py`` and registers a generator of :class:`Case` with ``@suite("<op>")``.
A provider is a *setup* function that builds its inputs and returns the closure to time; setup raises
:class:`Unavailable` (e.g. flash-attn not installed, backend not built) and the provider is skipped with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

MODES = ("fwd", "bwd", "fwd+bwd")
OUR_PROVIDERS = ("triton", "native")


class Unavailable(Exception):
    """A provider cannot run here; the message says why (it is recorded, not raised)."""


@dataclass(frozen=True)
class SuiteConfig:
    """What the command line asked for."""

    device: torch.device
    dtype: torch.dtype
    quick: bool
    modes: tuple[str, ...] = MODES


@dataclass
class Case:
    """One op, shape, dtype and mode, and the providers to time on it.

    ``flops`` / ``bytes`` are per call (performance.md's conventions: attention fwd 4*B*H*Sq*Sk*D, x0.5 causal, bwd
    2.5x fwd; memory-bound ops read each input once and write each output once). A case sets one or both.
    """

    op: str
    mode: str
    shape: dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    providers: dict[str, Callable[[], Callable[[], Any]]]
    flops: float | None = None
    bytes: float | None = None
    label: str = ""  # e.g. "causal", "padding mask"

    def shape_text(self) -> str:
        text = " ".join(f"{k}={v}" for k, v in self.shape.items())
        return f"{text} {self.label}".strip()


SuiteFn = Callable[[SuiteConfig], Iterable[Case]]
SUITES: dict[str, SuiteFn] = {}


def suite(op: str) -> Callable[[SuiteFn], SuiteFn]:
    """Registers the case generator of one op (``--op <op>`` on the command line)."""

    def add(fn: SuiteFn) -> SuiteFn:
        SUITES[op] = fn
        return fn

    return add


def timed_closure(forward: Callable[[], Any], inputs: list[torch.Tensor], mode: str) -> Callable[[], Any]:
    """The closure to time for ``mode``, given a ``forward()`` over ``inputs``.

    * ``fwd``: ``forward()`` under ``torch.no_grad()`` (inference).
    * ``bwd``: the forward runs once here; the closure computes the input gradients of that graph (retained).
    * ``fwd+bwd``: forward then the input gradients, every call.
    The output gradients are random, drawn once.
    """
    if mode == "fwd":
        def run_forward():
            with torch.no_grad():
                return forward()
        return run_forward
    leaves = [t.detach().requires_grad_(True) if not t.requires_grad else t for t in inputs]
    if any(a is not b for a, b in zip(leaves, inputs)):
        raise ValueError("timed_closure: inputs that need gradients must be leaves with requires_grad=True")
    outputs = _tensors(forward())
    grads = [torch.randn_like(o) for o in outputs]
    if mode == "bwd":
        def run_backward():
            return torch.autograd.grad(outputs, leaves, grads, retain_graph=True, allow_unused=True)
        return run_backward
    if mode == "fwd+bwd":
        def run_forward_backward():
            return torch.autograd.grad(_tensors(forward()), leaves, grads, allow_unused=True)
        return run_forward_backward
    raise ValueError(f"argument `mode` must be one of {MODES}; got {mode!r}")


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of a peer, or :class:`Unavailable` when compilation cannot work here.

    Donated buffers are switched off: they forbid ``retain_graph=True``, which the ``bwd`` mode needs to time the
    same backward repeatedly.
    """
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    try:
        return torch.compile(fn)
    except Exception as error:  # noqa: BLE001  (any failure makes the provider unavailable, with the reason)
        raise Unavailable(f"torch.compile failed: {error}") from error


def probe(call: Callable[[], Any]) -> None:
    """Runs one of our ops once; a backend that cannot serve the call here becomes :class:`Unavailable`."""
    from kernels import BackendError

    try:
        call()
    except BackendError as error:
        raise Unavailable(str(error)) from error


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [v for v in value if isinstance(v, torch.Tensor) and v.requires_grad]


def iter_cases(ops: Iterable[str], config: SuiteConfig) -> Iterator[Case]:
    for op in ops:
        for case in SUITES[op](config):
            if case.mode in config.modes:
                yield case
