"""kernels.masked_softmax with NaN and ±Inf planted in its inputs, on every backend usable here, against torch's own
softmax (README, non-finite values): a NaN or +inf kept score makes the row NaN, a position hidden by a bool mask or
by causality does not take part, an additive mask is added, fully masked rows stay zero; the backward likewise.
NaN placement is compared element by element, the finite elements by value."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.testing import available_devices, backends_for

OP = "masked_softmax"
# CUDA cases belong to the GPU tier (marker `gpu`).
BACKENDS = [pytest.param(d, b, id=f"{d}-{b}", marks=[pytest.mark.gpu] if d == "cuda" else [])
            for d in available_devices() for b in ["torch"] + backends_for(OP, d)]
NAN, INF = float("nan"), float("inf")
# Row lengths: one block, and (Triton under the interpreter: > 512) the looped variant.
LENGTHS = [17, 700]


def _torch_softmax(x, mask, scale, is_causal):
    """torch's softmax of the masked scores: bool masks and causality by masked_fill, additive masks added."""
    s = x * scale
    if mask is not None:
        s = s.masked_fill(~mask, -INF) if mask.dtype == torch.bool else s + mask
    if is_causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool, device=s.device).triu(1), -INF)
    return torch.softmax(s, dim=-1)


def _compare(device, backend, x, mask=None, *, is_causal=False, grad=None, scale=0.5):
    """Forward and backward of the backend and of torch on the same planted inputs: same NaN positions, close values."""
    x = x.to(device)
    mask = None if mask is None else mask.to(device)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ours = kernels.masked_softmax(xs[0], mask, scale=scale, is_causal=is_causal, backend=backend)
    theirs = _torch_softmax(xs[1], mask, scale, is_causal)
    g = torch.randn_like(x) if grad is None else grad.to(device)
    ours.backward(g)
    theirs.backward(g)
    # The gradient is compared where torch's composite lets it through: every position of a row whose output and
    # gradient are finite, and the kept positions of the others. At a hidden position of a NaN row the backward, which sees only y, gives NaN where
    # masked_fill's backward gives 0 (README: a documented difference).
    kept = torch.ones_like(x, dtype=torch.bool)
    if mask is not None and mask.dtype == torch.bool:
        kept = kept & mask
    if is_causal:
        kept = kept & torch.ones(x.shape[-2:], dtype=torch.bool, device=device).tril()
    nan_rows = theirs.isnan().any(-1, keepdim=True) | xs[1].grad.isnan().any(-1, keepdim=True)
    compared = kept | ~nan_rows
    for name, a, b, where in [("y", ours, theirs, torch.ones_like(kept)), ("dx", xs[0].grad, xs[1].grad, compared)]:
        a, b = a[where], b[where]
        assert torch.equal(a.isnan(), b.isnan()), (
            f"{name}: NaN at {a.isnan().nonzero().tolist()[:8]}, torch at {b.isnan().nonzero().tolist()[:8]}")
        finite = ~b.isnan()
        torch.testing.assert_close(a[finite], b[finite], atol=1e-5, rtol=1e-4, msg=name)
    return ours, xs[0].grad


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_kept_score(device, backend, sk, value):
    """A NaN or +inf kept score gives a NaN row (and gradient row); -inf is probability 0. Other rows untouched."""
    x = torch.randn(3, 4, sk)
    x[1, 2, sk // 3] = value
    y, dx = _compare(device, backend, x)
    assert y[1, 2].isnan().all() == (value != -INF)
    assert not y[0].isnan().any() and not dx[0].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
def test_nan_at_hidden_positions(device, backend, sk):
    """A NaN where a bool mask is False, or past the causal limit, takes no part: the rows stay finite."""
    x = torch.randn(2, 6, sk)
    keep = torch.rand(6, sk) < 0.7
    keep[:, 0] = True
    hidden = (~keep).nonzero()[0]
    x[0, hidden[0], hidden[1]] = NAN
    x[1, 2, sk - 1] = NAN  # past the causal limit of row 2
    y, dx = _compare(device, backend, x, keep)
    assert not y[0].isnan().any() and not dx[0].isnan().any()
    y, dx = _compare(device, backend, x[1:], is_causal=True)
    assert not y.isnan().any() and not dx.isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
def test_additive_mask(device, backend, sk):
    """An additive mask is added: NaN or +inf in it gives a NaN row; -inf hides its position."""
    x = torch.randn(4, sk)
    mask = torch.randn(4, sk)
    mask[0, 3] = NAN
    mask[1, 4] = INF
    mask[2, 5] = -INF
    y, _ = _compare(device, backend, x, mask)
    assert y[[0, 1]].isnan().all() and not y[[2, 3]].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
def test_nan_under_minus_inf_additive_is_hidden(device, backend, sk):
    """A NaN score under a -inf additive value is hidden like a bool-masked one: the same output and gradient as with
    a finite score there (torch's softmax(x + mask) gives a NaN row: README, a deliberate difference)."""
    x = torch.randn(3, sk, device=device)
    mask = torch.randn(3, sk, device=device)
    mask[1, 6] = -INF
    grad = torch.randn(3, sk, device=device)
    results = []
    for value in (NAN, 1.0):
        xv = x.clone()
        xv[1, 6] = value
        xv.requires_grad_(True)
        y = kernels.masked_softmax(xv, mask, backend=backend)
        y.backward(grad)
        results.append((y.detach(), xv.grad))
    assert not results[0][0].isnan().any() and not results[0][1].isnan().any()
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
def test_nan_in_grad(device, backend, sk):
    """A NaN in a row of the incoming gradient gives a NaN gradient row, the masked positions included (0 * nan)."""
    x = torch.randn(4, sk)
    keep = torch.rand(4, sk) < 0.6
    keep[:, 0] = True
    grad = torch.randn(4, sk)
    grad[2, 1] = NAN
    _, dx = _compare(device, backend, x, keep, grad=grad)
    assert dx[2][keep[2]].isnan().all() and not dx[[0, 1, 3]].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sk", LENGTHS)
def test_fully_masked_row_with_nan_stays_zero(device, backend, sk):
    """A fully masked row holding NaN scores gives zeros and zero gradients (torch.softmax would give NaN)."""
    x = torch.randn(3, sk).requires_grad_(True)
    with torch.no_grad():
        x[1, ::2] = NAN
    keep = torch.ones(3, sk, dtype=torch.bool)
    keep[1] = False
    y = kernels.masked_softmax(x.to(device), keep.to(device), backend=backend)
    y.backward(torch.randn_like(y))
    assert torch.equal(y[1].cpu(), torch.zeros(sk)) and torch.equal(x.grad[1], torch.zeros(sk))
    assert not y.isnan().any() and not x.grad.isnan().any()
