"""Shared pieces of the property tests: the backends of an op on this machine, their dtypes, drawn tensor layouts,
and ``check_property``, which runs an op's property on examples drawn by hypothesis.

Every example draws an integer ``seed``: tensor values come from a generator seeded with it and torch's global
generator is reseeded with it (the random output gradients of ``check_against_reference``), so the falsifying example
that hypothesis prints (shapes, dtype, layout, masks, seed) reproduces a failure on its own. The example count is the
profile's (tests/conftest.py: ``ci`` by default) scaled by the cost of the backend: the Triton interpreter runs
programs one by one, so its examples are fewer and their shapes tiny.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, event, given, reject, settings
from hypothesis import strategies as st

from kernels import _backend
from kernels.testing import backends_for, check_against_reference

# The share of the profile's max_examples each backend gets (torch is the reference itself: a sanity run).
EXAMPLE_SHARE = {"native": 1.0, "triton": 0.3, "torch": 0.3}
LAYOUTS = ("contiguous", "transposed", "sliced")
# Attention head dims: every size up to 24, and the usual ones up to the ops' limit of 256.
HEAD_DIMS = st.one_of(st.integers(1, 24), st.sampled_from([32, 40, 64, 80, 96, 128, 160, 256]))


def backends(op: str) -> list:
    """pytest params: every CPU backend of ``op`` usable here and ``torch``; Triton's marked ``interpret``."""
    return [pytest.param(name, marks=[pytest.mark.interpret] if name == "triton" else [], id=name)
            for name in backends_for(op, "cpu") + ["torch"]]


def dtypes(op: str, backend: str) -> st.SearchStrategy[torch.dtype]:
    """The CPU dtypes ``backend`` serves for ``op``, fp16 left out where plain torch has no CPU kernel for the op."""
    served = _backend.implementations(op)[backend].dtypes.get("cpu", ())
    return st.sampled_from([d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16) if d in served])


def tiny(backend: str) -> bool:
    """Whether examples for ``backend`` must stay tiny (the Triton interpreter)."""
    return backend == "triton"


def make(generator: torch.Generator, shape, dtype: torch.dtype, layout: str = "contiguous", *, scale: float = 1.0,
         offset: float = 0.0, grad: bool = False) -> torch.Tensor:
    """N(offset, scale^2) values of ``shape`` in ``dtype`` laid out as ``layout``: ``contiguous``; ``transposed``
    (the last two dims swapped in memory); ``sliced`` (every other element of a last dim twice as long)."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        stored = torch.randn((*shape[:-2], shape[-1], shape[-2]), generator=generator)
        view = lambda t: t.transpose(-1, -2)  # noqa: E731
    elif layout == "sliced" and len(shape) >= 1:
        stored = torch.randn((*shape[:-1], 2 * shape[-1]), generator=generator)
        view = lambda t: t[..., ::2]  # noqa: E731
    else:
        stored, view = torch.randn(shape, generator=generator), lambda t: t  # noqa: E731
    # The cast before the view: .to() of a non-dense view would make it contiguous again.
    return view((stored * scale + offset).to(dtype)).requires_grad_(grad)


def check_property(strategy: st.SearchStrategy, check, backend: str) -> None:
    """Runs ``check(example)`` on examples drawn from ``strategy`` (each a dict with a ``seed``): reseeds torch's
    generator first. The number of examples is the profile's times ``EXAMPLE_SHARE[backend]`` (at least 4)."""
    examples = max(4, round(settings.default.max_examples * EXAMPLE_SHARE[backend]))
    _run(strategy, check, settings(max_examples=examples))


def check_rule(fn, reference_fn, *args, **kwargs) -> None:
    """``check_against_reference(fn, reference_fn, ...)`` on the examples where plain torch itself meets the
    tolerance rule: the fixed fp32 / fp64 tables do not hold for ill-conditioned inputs (a layer norm of a row whose
    mean dwarfs its spread, a weight gradient summed over many rows), for torch no more than for us, so such
    examples are rejected (counted as a hypothesis event), and the property reads "wherever plain torch meets the
    rule, so does the kernel". fp16 / bf16 examples always count: their rule is relative to plain torch already.
    Both runs draw the same random output gradients."""
    state = torch.get_rng_state()
    try:
        check_against_reference(reference_fn, reference_fn, *args, **kwargs)
    except AssertionError:
        event("rejected: plain torch misses the fixed tolerance table")
        reject()
    torch.set_rng_state(state)
    check_against_reference(fn, reference_fn, *args, **kwargs)


def assert_property_fails(strategy: st.SearchStrategy, wrong_check) -> None:
    """Negative control: ``wrong_check`` (the property run on a deliberately wrong kernel) fails on some example.
    No shrinking: the first failure is enough."""
    with pytest.raises(AssertionError):
        _run(strategy, wrong_check, settings(phases=[Phase.explicit, Phase.generate], print_blob=False,
                                             report_multiple_bugs=False))


def _run(strategy, check, chosen: settings) -> None:
    @chosen
    @given(example=strategy)
    def property_holds(example):
        torch.manual_seed(example["seed"])
        check(example)

    property_holds()


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**31 - 1)


def sizes(low: int, high: int, *, empty: bool = True) -> st.SearchStrategy[int]:
    """A dimension size in ``low..high``, uniformly, and 0 (an empty dim) as one value more when ``empty``. (Plain
    ``st.integers`` favours its bounds: a third of the examples were empty, which pass trivially.)"""
    return st.sampled_from([*range(low, high + 1), *([0] if empty and low > 0 else [])])
