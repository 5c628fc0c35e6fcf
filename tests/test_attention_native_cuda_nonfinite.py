"""GPU tier: NaN and Inf in the CUDA attention kernels (csrc/cuda/attention_*), forward and backward.

The rule (issue 15): a NaN or Inf that enters a row's scores reaches that row's output, lse and dq; a NaN or Inf at a
position the mask hides (bool mask, key padding, causality, a -inf in the additive mask) does not enter the scores;
fully masked rows give zeros. Where the rule and SDPA agree, the rows that come out NaN are compared with SDPA's math
backend on the CPU in fp32; where SDPA lets a masked NaN through (its math backend adds the mask to a NaN score), the
expectation is written out. Products with an exact zero inside the tensor-core matmuls stay IEEE (0 * NaN = NaN, as
in SDPA's math backend): a NaN in V at a hidden key reaches the forward rows of its key tile, one in K at a hidden
key reaches dq, one in Q of a hidden row reaches dk. Padding keys are the exception that is free to make: their K
and V rows are zero-filled as they are loaded, so nothing of theirs reaches anything.

The ops are called through the test-local autograd wrapper of tests/test_attention_native_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels._extension import has_native_kernel

from test_attention_native_cuda import dense  # tests/ is on sys.path (pytest's default import mode)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_native_kernel("attention_forward", "cuda"),
                       reason="kernels._C lacks the CUDA attention kernels"),
]

NAN, INF = float("nan"), float("inf")
B, H, SQ, SK = 1, 2, 70, 90  # partial 64-row and key tiles; head 1 stays clean (a control)
ROW, KEY = 5, 7


def _inputs(d):
    torch.manual_seed(0)
    return [torch.randn(B, H, n, d, device="cuda", dtype=torch.float16) for n in (SQ, SK, SK)]


def _run(q, k, v, **kwargs):
    """out, dq, dk, dv of the CUDA op (the same random output gradient in every call)."""
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = dense(q, k, v, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda", dtype=out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    return (out.detach(), *grads)


def _nan_rows(x):
    """(B, H, S) bool: which rows hold a NaN."""
    return x.isnan().any(-1).cpu()


def _sdpa_math(q, k, v, attn_mask=None, is_causal=False):
    """out, dq, dk, dv of SDPA's math backend on the CPU in fp32 (the same output gradient is not needed: only the
    NaN rows are compared)."""
    q, k, v = (x.detach().float().cpu().requires_grad_() for x in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = attn_mask.cpu() if attn_mask.dtype == torch.bool else attn_mask.float().cpu()
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return (out.detach(), *grads)


def _assert_nan_rows_as_sdpa(ours, theirs, names=("out", "dq", "dk", "dv")):
    for name, a, b in zip(names, ours, theirs):
        assert torch.equal(_nan_rows(a), _nan_rows(b)), f"{name}: NaN rows {_nan_rows(a).nonzero().tolist()} != " \
                                                        f"SDPA's {_nan_rows(b).nonzero().tolist()}"


def _planted(x, index, value):
    x = x.clone()
    x[index] = value
    return x


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("case", ["q-nan", "k-nan", "v-nan", "q+inf", "k-inf"])
def test_unmasked_non_finite_reaches_the_rows_as_in_sdpa(d, case):
    """A NaN / Inf in an element every row sees: the same NaN rows as SDPA in out and in every gradient."""
    q, k, v = _inputs(d)
    tensor, value = {"q-nan": (0, NAN), "k-nan": (1, NAN), "v-nan": (2, NAN), "q+inf": (0, INF),
                     "k-inf": (1, -INF)}[case]
    inputs = [q, k, v]
    inputs[tensor] = _planted(inputs[tensor], (0, 0, ROW if tensor == 0 else KEY, 0), value)
    ours, theirs = _run(*inputs), _sdpa_math(*inputs)
    _assert_nan_rows_as_sdpa(ours[:2] if case in ("q+inf", "k-inf") else ours, theirs)
    assert not _nan_rows(ours[0])[:, 1].any(), "head 1 holds no non-finite value"


@pytest.mark.parametrize("d", [64, 256])
def test_nan_at_padding_keys_reaches_nothing(d):
    """NaN in K and V at a padding key: out and every gradient equal, bit for bit, the run with finite values there
    (their rows are zero-filled as they are loaded), and the padding key's gradients are zero."""
    q, k, v = _inputs(d)
    padding = torch.zeros(B, SK, dtype=torch.bool, device="cuda")
    padding[:, KEY] = True
    poisoned = _run(q, _planted(k, (0, 0, KEY), NAN), _planted(v, (0, 0, KEY), NAN), key_padding_mask=padding)
    clean = _run(q, k, v, key_padding_mask=padding)
    for name, a, b in zip(("out", "dq", "dk", "dv"), poisoned, clean):
        assert not a.isnan().any(), f"{name} holds NaN"
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    assert not poisoned[2][0, 0, KEY].any() and not poisoned[3][0, 0, KEY].any(), "a padding key gets zero gradients"


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("hide", ["bool", "additive-inf"])
def test_nan_in_k_at_a_masked_key_stays_out_of_the_scores(d, hide):
    """A NaN in K at a key the mask hides from every row: out, dk and dv equal, bit for bit, the run with a finite
    value there (SDPA's math backend gives NaN in every row: it adds the mask to the NaN score). dq meets the NaN in
    dQ += dS K with dS = 0 (0 * NaN, as in SDPA): not asserted."""
    q, k, v = _inputs(d)
    if hide == "bool":
        mask = torch.ones(SQ, SK, dtype=torch.bool, device="cuda")
        mask[:, KEY] = False
    else:
        mask = torch.zeros(SQ, SK, dtype=torch.float16, device="cuda")
        mask[:, KEY] = -INF
    poisoned = _run(q, _planted(k, (0, 0, KEY, 0), NAN), v, attn_mask=mask)
    clean = _run(q, _planted(k, (0, 0, KEY, 0), 0.0), v, attn_mask=mask)
    for name, i in (("out", 0), ("dk", 2), ("dv", 3)):
        a, b = poisoned[i], clean[i]
        assert not a.isnan().any(), f"{name} holds NaN"
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("d", [64, 256])
def test_nan_behind_causality_reaches_only_the_rows_that_see_it(d):
    """Causal, NaN in key 60: the outputs of rows 0..59 (which do not see it) equal the clean run's, rows 60.. are
    NaN in out and dq."""
    q, k, v = _inputs(d)
    poisoned = _run(q, _planted(k, (0, 0, 60, 0), NAN), v, is_causal=True)
    clean = _run(q, k, v, is_causal=True)
    assert _nan_rows(poisoned[0])[0, 0, 60:].all() and _nan_rows(poisoned[1])[0, 0, 60:].all()
    torch.testing.assert_close(poisoned[0][0, 0, :60], clean[0][0, 0, :60], atol=0, rtol=0)


@pytest.mark.parametrize("value", [NAN, INF])
def test_non_finite_additive_mask_entry_reaches_its_row(value):
    """A NaN or +inf in the additive mask at (ROW, KEY): row ROW is NaN in out and dq, as in SDPA; the other rows
    are finite."""
    q, k, v = _inputs(64)
    mask = _planted(torch.randn(SQ, SK, device="cuda", dtype=torch.float16), (ROW, KEY), value)
    ours, theirs = _run(q, k, v, attn_mask=mask), _sdpa_math(q, k, v, attn_mask=mask)
    _assert_nan_rows_as_sdpa(ours[:2], theirs[:2])
    assert _nan_rows(ours[0])[0, :, ROW].all() and _nan_rows(ours[0]).sum() == H


def test_nan_in_q_of_a_fully_masked_row_gives_zeros():
    """A fully masked row gives zeros in out and dq even with a NaN in its q (the rule: fully masked rows give
    zeros; SDPA's math backend gives NaN there). dK takes Q through a tensor-core product with dS = 0, where
    0 * NaN = NaN: not asserted."""
    q, k, v = _inputs(64)
    mask = torch.rand(SQ, SK, device="cuda") < 0.8
    mask[ROW] = False
    out, dq, _, _ = _run(_planted(q, (0, 0, ROW, 0), NAN), k, v, attn_mask=mask)
    assert not out[:, :, ROW].any() and not dq[:, :, ROW].any()
    assert not out.isnan().any()


def test_nan_in_v_at_a_masked_key_propagates_as_in_sdpa_math():
    """The documented exception: P = 0 at the hidden key, and the tensor cores' 0 * NaN = NaN reaches every row of
    its key tile (here every row, as in SDPA's math backend)."""
    q, k, v = _inputs(64)
    mask = torch.ones(SQ, SK, dtype=torch.bool, device="cuda")
    mask[:, KEY] = False
    poisoned_v = _planted(v, (0, 0, KEY, 0), NAN)
    ours, theirs = _run(q, k, poisoned_v, attn_mask=mask), _sdpa_math(q, k, poisoned_v, attn_mask=mask)
    _assert_nan_rows_as_sdpa(ours[:1], theirs[:1])


def test_sdpa_reference_check_can_fail():
    """Negative control of the comparison helper: NaN rows that differ fail it."""
    q, k, v = _inputs(64)
    ours = _run(_planted(q, (0, 0, ROW, 0), NAN), k, v)
    with pytest.raises(AssertionError, match="NaN rows"):
        _assert_nan_rows_as_sdpa(ours[:1], _sdpa_math(q, k, v)[:1])
