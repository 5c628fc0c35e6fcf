"""Attention with NaN and ±Inf planted in q, k, v, the float mask and grad_out, on every backend usable here, against
SDPA's math backend (README, non-finite values): a NaN that enters a row's scores or weighted sum makes that row NaN,
forward and backward, as SDPA; a key hidden by a bool mask, causality or key padding takes no part (its k cannot
reach the row: here SDPA differs, and the expected result is SDPA's with that key's k made finite); fully masked rows
stay zero. NaN placement is compared element by element, the finite elements by value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import kernels
from kernels.testing import available_devices, backends_for

# CUDA cases belong to the GPU tier (marker `gpu`).
BACKENDS = [pytest.param(d, b, id=f"{d}-{b}", marks=[pytest.mark.gpu] if d == "cuda" else [])
            for d in available_devices() for b in ["torch"] + backends_for("attention", d)]
NAN, INF = float("nan"), float("inf")
B, H, S, D = 1, 2, 37, 16


def _qkv(sq=S, sk=S):
    return torch.randn(B, H, sq, D), torch.randn(B, H, sk, D), torch.randn(B, H, sk, D)


def _run(device, backend, q, k, v, grad, **kwargs):
    """Output and (dq, dk, dv) of the backend, or of SDPA's math backend when backend is None."""
    leaves = [t.clone().to(device).requires_grad_(True) for t in (q, k, v)]
    kwargs = {name: (t.to(device) if isinstance(t, torch.Tensor) else t) for name, t in kwargs.items()}
    if backend is None:
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(*leaves, **kwargs)
    else:
        out = kernels.scaled_dot_product_attention(*leaves, **kwargs, backend=backend)
    out.backward(grad.to(device))
    return [out.cpu()] + [leaf.grad.cpu() for leaf in leaves]


def _compare(device, backend, q, k, v, *, grad=None, check_grads=True, **kwargs):
    """Ours against SDPA's math backend on the same inputs (gradients too unless ``check_grads`` is False)."""
    grad = torch.randn_like(q) if grad is None else grad
    ours = _run(device, backend, q, k, v, grad, **kwargs)
    theirs = _run("cpu", None, q, k, v, grad, **kwargs)
    names = ["out", "dq", "dk", "dv"][: 4 if check_grads else 1]
    for name, a, b in zip(names, ours, theirs):
        assert torch.equal(a.isnan(), b.isnan()), (
            f"{name}: NaN rows {a.isnan().any(-1).nonzero().tolist()[:8]}, SDPA {b.isnan().any(-1).nonzero().tolist()[:8]}")
        finite = ~b.isnan()
        torch.testing.assert_close(a[finite], b[finite], atol=2e-4, rtol=1e-3, msg=name)
    return ours


def _check_causal_nan(out, grads, row, where):
    """A NaN in q[row] (or k[row] / v[row]) of head 1 under causality: the NaN output rows are exactly those that see
    it (for v: at least those), and the gradients are NaN at least where that row's (those rows') computation puts it; a NaN meeting a hidden
    position's weight of 0 in the backward may go further (0 * nan: README), so head 0 is the only must-be-finite."""
    expected = torch.zeros(B, H, S, dtype=torch.bool)
    if where == "q":
        expected[0, 1, row] = True
    else:
        expected[0, 1, row:] = True
    rows_nan = out.isnan().any(-1)
    if where == "v":  # v[row] is hidden from the rows before it: 0 * nan may reach them (README: not specified)
        assert rows_nan[expected].all() and not rows_nan[0, 0].any()
    else:
        assert torch.equal(rows_nan, expected)
    dq, dk, dv = grads
    assert dq[0, 1, row].isnan().all() and dk[0, 1, : row + 1].isnan().all()
    if where != "v":  # dv = P^T dO does not read v
        assert dv[0, 1, : row + 1].isnan().all()
    assert all(g[0, 0].isfinite().all() for g in grads)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_nan_in_inputs(device, backend, where, causal):
    """A NaN in q[i] makes row i NaN; in k[j] or v[j], every row that sees key j; gradients as SDPA's (exactly
    without a mask; under causality, see _check_causal_nan)."""
    q, k, v = _qkv()
    {"q": q, "k": k, "v": v}[where][0, 1, 20, 3] = NAN
    if not causal:
        out = _compare(device, backend, q, k, v)[0]
        assert out[0, 0].isfinite().all()
        return
    out, *grads = _run(device, backend, q, k, v, torch.randn_like(q), is_causal=True)
    _check_causal_nan(out, grads, 20, where)
    if where == "q":  # the output against SDPA (which also NaNs exactly row 20 here)
        theirs = _run("cpu", None, q, k, v, torch.randn_like(q), is_causal=True)[0]
        torch.testing.assert_close(out, theirs, atol=2e-4, rtol=1e-3, equal_nan=True)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [INF, -INF], ids=["inf", "-inf"])
def test_inf_in_inputs(device, backend, where, value):
    """±Inf in q or k gives ±inf scores: a +inf score makes its row NaN, -inf scores are weights 0, a row of -inf
    scores gives zeros; ±Inf in v reaches the rows that see it (forward, as SDPA's math backend)."""
    q, k, v = _qkv()
    {"q": q, "k": k, "v": v}[where][0, 1, 20, 3] = value
    _compare(device, backend, q, k, v, check_grads=False)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_nan_in_grad_out(device, backend):
    """A NaN in grad_out[i] gives NaN in dq[i] and in dk/dv of every key row i sees; other dq rows stay finite."""
    q, k, v = _qkv()
    grad = torch.randn_like(q)
    grad[0, 0, 9, 2] = NAN
    _, dq, dk, dv = _compare(device, backend, q, k, v, grad=grad)
    assert dq[0, 0, 9].isnan().all() and dq[0, 1].isfinite().all() and dk[0, 1].isfinite().all()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_float_mask(device, backend, value):
    """A float mask is added as SDPA's: NaN or +inf at (i, j) makes row i NaN; -inf hides the key."""
    q, k, v = _qkv()
    mask = torch.randn(S, S)
    mask[4, 11] = value
    out = _compare(device, backend, q, k, v, attn_mask=mask)[0]
    assert out[:, :, 4].isnan().all() == (value != -INF)
    assert out[:, :, 5:].isfinite().all()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("how", ["bool", "float", "padding"])
def test_nan_k_at_hidden_key(device, backend, how):
    """A NaN in the k of a key hidden by a bool mask, a -inf float mask value or key padding reaches no output row
    (SDPA's math backend gives NaN everywhere here: the expected output is SDPA's with that k made finite), nor dk or
    dv. dq may carry it (0 * nan in dS k: README), and is compared only where finite."""
    q, k, v = _qkv()
    k[0, 1, 11, 0] = NAN
    clean_k = k.nan_to_num(0.0)
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[:, 11] = False
    as_mask = {"attn_mask": keep[:, None, None, :].expand(B, H, S, S)}
    kwargs = {"bool": as_mask, "padding": {"key_padding_mask": ~keep},
              "float": {"attn_mask": torch.zeros(B, H, S, S).masked_fill(~as_mask["attn_mask"], -INF)}}[how]
    grad = torch.randn(B, H, S, D)
    out, dq, dk, dv = _run(device, backend, q, k, v, grad, **kwargs)
    out_ref, dq_ref, dk_ref, dv_ref = _run("cpu", None, q, clean_k, v, grad, **as_mask)
    for name, a, b in [("out", out, out_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)]:
        assert not a.isnan().any(), name
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3, msg=name)
    assert dq[0, 0].isfinite().all()
    finite = dq.isfinite()
    torch.testing.assert_close(dq[finite], dq_ref[finite], atol=2e-4, rtol=1e-3)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_fully_masked_row_stays_zero(device, backend):
    """A fully masked row gives zeros and zero gradients even with a NaN in its q (SDPA's math backend: NaN)."""
    q, k, v = _qkv()
    q[0, 0, 6, 1] = NAN
    keep = torch.ones(S, S, dtype=torch.bool)
    keep[6] = False
    out, dq, _, _ = _run(device, backend, q, k, v, torch.randn_like(q), attn_mask=keep)
    assert torch.equal(out[0, :, 6], torch.zeros(H, D)) and torch.equal(dq[0, :, 6], torch.zeros(H, D))
    assert not out.isnan().any() and not dq.isnan().any()


@pytest.mark.parametrize("where", ["q", "k"])
def test_native_multi_block(where):
    """Native CPU across several 128-key blocks and 128-row tiles: a NaN key late in the row, or a NaN query row,
    reaches exactly the rows SDPA gives (the online softmax's max and block skipping must keep it)."""
    q, k, v = _qkv(300, 300)
    {"q": q, "k": k}[where][0, 1, 250, 0] = NAN
    _compare("cpu", "native", q, k, v)
    out, *grads = _run("cpu", "native", q, k, v, torch.randn_like(q), is_causal=True)
    expected = torch.zeros(B, H, 300, dtype=torch.bool)
    expected[0, 1, 250:] = True
    if where == "q":
        expected = torch.zeros_like(expected)
        expected[0, 1, 250] = True
    assert torch.equal(out.isnan().any(-1), expected)


def test_native_varlen_nan_stays_in_its_sequence():
    """Packed sequences: a NaN key of one sequence reaches only that sequence's rows."""
    lengths = [5, 140, 9]
    cu = torch.tensor([0, 5, 145, 154], dtype=torch.int32)
    q, k, v = (torch.randn(154, H, D) for _ in range(3))
    k[100, 0, 3] = NAN
    out = kernels.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), backend="native")
    rows_nan = out.isnan().any(-1)  # (T, H)
    expected = torch.zeros_like(rows_nan)
    expected[5:145, 0] = True
    assert torch.equal(rows_nan, expected)
