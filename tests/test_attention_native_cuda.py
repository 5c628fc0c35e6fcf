"""GPU tier of the CUDA attention kernels (csrc/cuda/attention_*.cu, csrc/cuda/varlen_attention.cu): head dims 32,
96 and 256 (next to 64 and 128) forward and backward against the reference, fp16 and bf16, with causal / padding /
bool / additive masks and dropout; the packed-sequence ops against the reference and, sequence by sequence, against
the dense op (the same kernel code); argument checks of the varlen ops.

The ops are called through torch.ops.kernels.* with a test-local autograd.Function, so these tests do not depend on
the Python wiring of the native backend (kernels/_ops/attention_native.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from kernels import reference
from kernels._extension import has_native_kernel
from kernels.testing import check_against_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_native_kernel("varlen_attention_forward", "cuda"),
                       reason="kernels._C lacks the CUDA varlen attention kernels"),
]

ops = torch.ops.kernels
HEAD_DIMS = [32, 64, 96, 128, 256]
NEW_HEAD_DIMS = [32, 96, 256]
DTYPES = [torch.float16, torch.bfloat16]


def _keep_mask(seed, shape, p):
    from kernels._ops.attention_native import dropout_keep_mask

    return dropout_keep_mask(seed, shape, p).cuda()


# ----------------------------------------------------------------------------------------------------------------------
# The ops with autograd (forward op + backward op), as the native backend wires them
# ----------------------------------------------------------------------------------------------------------------------

class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, padding, is_causal, scale, dropout_p, seed):
        seed = torch.tensor([seed], device=q.device)  # the op reads its seed from a device tensor
        out, lse = ops.attention_forward(q, k, v, mask, padding, is_causal, scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.masks = (mask, padding)
        ctx.arguments = (is_causal, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ops.attention_backward(grad, q, k, v, out, lse, *ctx.masks, *ctx.arguments)
        return dq, dk, dv, None, None, None, None, None, None


class _Varlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, dropout_p, seed):
        seed = torch.tensor([seed], device=q.device)  # the op reads its seed from a device tensor
        out, lse = ops.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.arguments = (max_q, max_k, is_causal, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = ops.varlen_attention_backward(grad, q, k, v, out, lse, cu_q, cu_k, *ctx.arguments)
        return dq, dk, dv, None, None, None, None, None, None, None, None


def dense(q, k, v, attn_mask=None, *, is_causal=False, key_padding_mask=None, dropout_p=0.0, seed=0,
          dropout_mask=None):
    """The dense op on (B, H, S, D) tensors; the mask is passed as the (B, H, Sq, Sk) broadcast view the op takes."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    mask = None
    if attn_mask is not None:
        mask = (attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)).expand(b, h, sq, sk)
    return _Dense.apply(q, k, v, mask, key_padding_mask, is_causal, d ** -0.5, dropout_p, seed)


def dense_reference(q, k, v, attn_mask=None, *, is_causal=False, key_padding_mask=None, dropout_p=0.0, seed=0,
                    dropout_mask=None):
    return reference.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa=True,
                                                  key_padding_mask=key_padding_mask, dropout_mask=dropout_mask)


def varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False, dropout_p=0.0, seed=0, dropout_mask=None):
    return _Varlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, q.shape[-1] ** -0.5, dropout_p, seed)


def varlen_reference(*args, seed=0, **kwargs):
    """The reference of the varlen op (the seed is the kernel's; the reference takes the keep-mask instead)."""
    return reference.varlen_attention(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------

def _dense_inputs(b, h, hkv, sq, sk, d, dtype):
    q = torch.randn(b, h, sq, d, dtype=dtype, device="cuda", requires_grad=True)
    k = torch.randn(b, hkv, sk, d, dtype=dtype, device="cuda", requires_grad=True)
    v = torch.randn(b, hkv, sk, d, dtype=dtype, device="cuda", requires_grad=True)
    return q, k, v


def _mask_kwargs(kind, b, sq, sk, dtype):
    kwargs = {}
    if "causal" in kind:
        kwargs["is_causal"] = True
    if "padding" in kind:
        padding = torch.rand(b, sk, device="cuda") < 0.3
        padding[0, : sk // 2] = True  # whole key tiles of padding (skipped by the forward)
        kwargs["key_padding_mask"] = padding
    if "bool" in kind:
        kwargs["attn_mask"] = torch.rand(sq, sk, device="cuda") < 0.8  # broadcast over batch and heads
    if kind == "float":
        kwargs["attn_mask"] = torch.randn(b, 1, sq, sk, dtype=dtype, device="cuda")  # broadcast over heads
    return kwargs


def _offsets(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def _packed(lengths_q, lengths_k, heads, kv_heads, d, dtype, requires_grad=True):
    cu_q, cu_k = _offsets(lengths_q), _offsets(lengths_k)
    q = torch.randn(sum(lengths_q), heads, d, dtype=dtype, device="cuda", requires_grad=requires_grad)
    k = torch.randn(sum(lengths_k), kv_heads, d, dtype=dtype, device="cuda", requires_grad=requires_grad)
    v = torch.randn(sum(lengths_k), kv_heads, d, dtype=dtype, device="cuda", requires_grad=requires_grad)
    return q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k)


# ----------------------------------------------------------------------------------------------------------------------
# Dense: every head dim against the reference
# ----------------------------------------------------------------------------------------------------------------------

# Sizes straddle the 64-row query tiles (32 in the forward at D = 256) and every key tile (64 keys up to D = 128, 16
# at 256; the backward's 16/32-row and 16/32/64-key steps); the second has more queries than keys.
DENSE_SHAPES = [(2, 4, 2, 130, 203), (1, 2, 1, 97, 45)]
MASKS = ["none", "causal", "padding", "bool", "float", "causal+padding+bool"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASKS)
def test_head_dims_forward_backward(dtype, d, shape, kind):
    b, h, hkv, sq, sk = shape
    q, k, v = _dense_inputs(b, h, hkv, sq, sk, d, dtype)
    check_against_reference(dense, dense_reference, q, k, v, **_mask_kwargs(kind, b, sq, sk, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", NEW_HEAD_DIMS)
def test_head_dims_long_sequences(dtype, d):
    q, k, v = _dense_inputs(1, 4, 4, 1000, 1500, d, dtype)
    check_against_reference(dense, dense_reference, q, k, v, is_causal=True)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_head_dims_dropout(d):
    b, h, sq, sk, p, seed = 2, 2, 70, 150, 0.25, 123456789
    q, k, v = _dense_inputs(b, h, h, sq, sk, d, torch.float16)
    keep = _keep_mask(seed, (b, h, sq, sk), p)
    padding = torch.rand(b, sk, device="cuda") < 0.2
    check_against_reference(dense, dense_reference, q, k, v, is_causal=True, key_padding_mask=padding, dropout_p=p,
                            seed=seed, dropout_mask=keep)


@pytest.mark.parametrize("d", NEW_HEAD_DIMS)
def test_head_dims_non_contiguous(d):
    """q, k, v as (B, S, H, D) tensors seen as (B, H, S, D): rows strided by H * D."""
    b, h, sq, sk = 2, 3, 90, 66
    q = torch.randn(b, sq, h, d, dtype=torch.bfloat16, device="cuda").transpose(1, 2).requires_grad_()
    k = torch.randn(b, sk, h, d, dtype=torch.bfloat16, device="cuda").transpose(1, 2).requires_grad_()
    v = torch.randn(b, sk, h, d, dtype=torch.bfloat16, device="cuda").transpose(1, 2).requires_grad_()
    check_against_reference(dense, dense_reference, q, k, v, is_causal=True)


@pytest.mark.parametrize("d", NEW_HEAD_DIMS)
def test_head_dims_fully_masked_rows(d):
    b, h, sq, sk = 2, 2, 40, 50
    q, k, v = _dense_inputs(b, h, h, sq, sk, d, torch.float16)
    mask = torch.rand(b, 1, sq, sk, device="cuda") < 0.7
    mask[:, :, 3] = False  # query row 3 sees nothing
    out = dense(q, k, v, mask)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    out.backward(torch.randn_like(out))
    assert torch.equal(q.grad[:, :, 3], torch.zeros_like(q.grad[:, :, 3]))
    assert not out.isnan().any() and not k.grad.isnan().any()


@pytest.mark.parametrize("d", [32, 64, 256])
def test_all_padding_key_tiles_are_skipped(d):
    """Batch entry 0: keys 0..199 are padding (whole tiles of the forward and the dQ kernel, three whole 64-key blocks
    of the dK/dV kernel, skipped); batch entry 1: every key is padding (fully masked rows: zero outputs and zero
    gradients, every tile skipped)."""
    b, h, sq, sk = 2, 2, 90, 300
    q, k, v = _dense_inputs(b, h, h, sq, sk, d, torch.bfloat16)
    padding = torch.rand(b, sk, device="cuda") < 0.2
    padding[0, :200] = True
    padding[1] = True
    check_against_reference(dense, dense_reference, q, k, v, key_padding_mask=padding)
    out = dense(q, k, v, key_padding_mask=padding)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert not out[1].any() and not dq[1].any() and not dk[1].any() and not dv[1].any()
    assert not dk[0, :, :200].any() and not dv[0, :, :200].any()


def _mask_layouts(kind, b, h, sq, sk, dtype):
    """Masks (bool or additive) whose layouts take the paired loads (even strides, aligned) or defeat them."""
    def draw(*shape):
        x = torch.rand(*shape, device="cuda")
        return x < 0.8 if kind == "bool" else torch.where(x < 0.8, torch.randn_like(x), -torch.inf).to(dtype)

    return {
        "paired": draw(b, h, sq, sk),                                 # key stride 1, even strides, aligned
        "odd-row-stride": draw(sq, sk + 1)[:, :sk],                   # rows sk + 1 apart (odd)
        "misaligned": draw(sq * sk + 1)[1:].view(sq, sk),             # the first key at an odd address
        "transposed": draw(b, sk, sq).transpose(1, 2)[:, None],       # key stride sq, broadcast over heads
    }


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_layouts_paired_and_scalar_loads(d, kind):
    """The forward and the dQ kernel read a row's mask entries for keys (2j, 2j + 1) in one load when the layout
    allows it and one by one otherwise: both give the reference's answer (Sk even, so the paired case pairs)."""
    b, h, sq, sk = 2, 2, 77, 130
    for name, mask in _mask_layouts(kind, b, h, sq, sk, torch.float16).items():
        q, k, v = _dense_inputs(b, h, h, sq, sk, d, torch.float16)
        try:
            check_against_reference(dense, dense_reference, q, k, v, mask, is_causal=name == "misaligned")
        except AssertionError as error:
            raise AssertionError(f"mask layout {name}: {error}") from error


def test_head_dim_256_backward_is_deterministic():
    """The dK/dV kernel runs two passes at D = 256 (dV, then dK); still no atomics."""
    q, k, v = _dense_inputs(2, 4, 2, 300, 400, 256, torch.bfloat16)
    grad = torch.randn_like(q)
    first = torch.autograd.grad(dense(q, k, v, is_causal=True), (q, k, v), grad)
    for _ in range(50):
        again = torch.autograd.grad(dense(q, k, v, is_causal=True), (q, k, v), grad)
        assert all(torch.equal(a, b) for a, b in zip(again, first))


def test_unsupported_head_dim_names_it():
    q, k, v = _dense_inputs(1, 1, 1, 8, 8, 80, torch.float16)
    with pytest.raises(ValueError, match="head dim 80; the CUDA kernel supports head dims 32, 64, 96, 128 and 256"):
        ops.attention_forward(q, k, v, None, None, False, 0.1, 0.0, 0)


def test_more_batch_heads_than_a_grid_dimension_of_65535():
    """B x H = 65664: the grids put (batch, head) pairs on x (limit 2^31 - 1), the row blocks on y; decode-size rows."""
    q, k, v = _dense_inputs(2052, 32, 32, 1, 24, 64, torch.bfloat16)
    check_against_reference(dense, dense_reference, q, k, v)


def test_key_blocks_no_query_sees_have_zero_gradients():
    """Causal with Sk = 3 Sq: the dK/dV CTAs of keys >= Sq walk no query row (their K/V copies must still complete
    before the CTA leaves); their gradients are exactly zero, run after run."""
    q, k, v = _dense_inputs(2, 4, 2, 100, 300, 64, torch.float16)
    grad = torch.randn_like(q)
    for _ in range(20):
        _, dk, dv = torch.autograd.grad(dense(q, k, v, is_causal=True), (q, k, v), grad)
        assert torch.equal(dk[:, :, 100:], torch.zeros_like(dk[:, :, 100:]))
        assert torch.equal(dv[:, :, 100:], torch.zeros_like(dv[:, :, 100:]))
    check_against_reference(dense, dense_reference, q, k, v, is_causal=True)


def test_misaligned_contiguous_grad_out():
    """A contiguous grad_out at an odd element offset (not 16-byte aligned) is copied before the 16-byte loads."""
    q, k, v = _dense_inputs(1, 2, 2, 70, 90, 64, torch.float16)
    out, lse = ops.attention_forward(q.detach(), k.detach(), v.detach(), None, None, False, 0.125, 0.0, 0)
    grad = torch.randn_like(out)
    storage = torch.empty(grad.numel() + 1, dtype=grad.dtype, device="cuda")
    misaligned = storage[1:].view(grad.shape).copy_(grad)
    assert misaligned.is_contiguous() and misaligned.data_ptr() % 16 != 0
    expected = ops.attention_backward(grad, q, k, v, out, lse, None, None, False, 0.125, 0.0, 0)
    got = ops.attention_backward(misaligned, q, k, v, out, lse, None, None, False, 0.125, 0.0, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_backward_tensors_on_another_device_name_the_argument():
    q, k, v = _dense_inputs(1, 2, 2, 8, 8, 64, torch.float16)
    out, lse = ops.attention_forward(q.detach(), k.detach(), v.detach(), None, None, False, 0.125, 0.0, 0)
    for name, args in (("grad_out", (out.cpu(), out, lse)), ("out", (out, out.cpu(), lse)),
                       ("lse", (out, out, lse.cpu()))):
        with pytest.raises(ValueError, match=f"`{name}`"):
            ops.attention_backward(args[0], q, k, v, args[1], args[2], None, None, False, 0.125, 0.0, 0)


# ----------------------------------------------------------------------------------------------------------------------
# Varlen
# ----------------------------------------------------------------------------------------------------------------------

# Sequences of 1, 64, 130 and 77 queries against 40, 64, 130 and 200 keys: a single row, exact tiles, partial tiles
# on both sides, more keys than queries (and, causal, rows that see every key of a shorter sequence).
LENGTHS_Q, LENGTHS_K = [1, 64, 130, 77], [40, 64, 130, 200]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_matches_reference(dtype, d, is_causal):
    check_against_reference(varlen, varlen_reference, *_packed(LENGTHS_Q, LENGTHS_K, 4, 2, d, dtype),
                            is_causal=is_causal)


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_equals_dense_op_per_sequence(d, is_causal):
    """The varlen ops run the dense kernels' code on each sequence's rows: outputs, lse and gradients match the dense
    ops on that sequence alone to rounding (the two are separate instantiations, so the compiler may contract a
    multiply-add differently; within one bf16 ulp). An empty sequence (no query, 5 keys) gets zero dK / dV; one
    with no key gets zero outputs."""
    lengths_q, lengths_k = [*LENGTHS_Q, 0, 20], [*LENGTHS_K, 5, 0]
    q, k, v, cu_q, cu_k, max_q, max_k = _packed(lengths_q, lengths_k, 4, 2, d, torch.bfloat16, requires_grad=False)
    scale = d ** -0.5
    out, lse = ops.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, 0.0, 0)
    grad = torch.randn_like(out)
    dq, dk, dv = ops.varlen_attention_backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, is_causal, scale,
                                               0.0, 0)
    assert lse.shape == (q.shape[1], q.shape[0])
    for i in range(len(lengths_q)):
        rows, cols = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        if lengths_q[i] == 0:
            assert not dk[cols].any() and not dv[cols].any(), f"sequence {i}: dk, dv"
            continue
        qs, ks, vs = (x.transpose(0, 1)[None] for x in (q[rows], k[cols], v[cols]))
        o, l = ops.attention_forward(qs, ks, vs, None, None, is_causal, scale, 0.0, 0)
        gq, gk, gv = ops.attention_backward(grad[rows].transpose(0, 1)[None], qs, ks, vs, o, l, None, None,
                                            is_causal, scale, 0.0, 0)
        close = functools.partial(torch.testing.assert_close, atol=1e-3, rtol=2 ** -7)  # one bf16 ulp
        close(out[rows], o[0].transpose(0, 1), msg=lambda m: f"sequence {i}: out: {m}")
        torch.testing.assert_close(lse[:, rows], l[0], atol=1e-5, rtol=1e-5, msg=lambda m: f"sequence {i}: lse: {m}")
        close(dq[rows], gq[0].transpose(0, 1), msg=lambda m: f"sequence {i}: dq: {m}")
        close(dk[cols], gk[0].transpose(0, 1), msg=lambda m: f"sequence {i}: dk: {m}")
        close(dv[cols], gv[0].transpose(0, 1), msg=lambda m: f"sequence {i}: dv: {m}")


@pytest.mark.parametrize("d", [32, 64, 96, 256])  # 64: the varlen dK/dV variant whose keep bits once spilled
def test_varlen_dropout_same_keep_mask(d):
    """The counter of (h, i, j) is (h*Tq + i)*Tk + j over the packed rows: the dense keep-mask of a (1, H, Tq, Tk)
    problem, cut into the sequences' blocks."""
    p, seed = 0.2, 31337
    args = _packed([7, 70], [12, 100], 2, 1, d, torch.float16)
    keep = _keep_mask(seed, (1, 2, args[0].shape[0], args[1].shape[0]), p)
    check_against_reference(varlen, varlen_reference, *args, is_causal=True, dropout_p=p, seed=seed,
                            dropout_mask=keep)


@pytest.mark.parametrize("d", [64, 256])
def test_varlen_non_contiguous_slices_of_packed_qkv(d):
    """q, k, v as head slices of one packed (T, H + 2 * Hkv, D) projection."""
    heads, kv_heads = 4, 2
    cu_q = cu_k = _offsets(LENGTHS_Q)
    max_q = max_k = max(LENGTHS_Q)
    qkv = torch.randn(sum(LENGTHS_Q), heads + 2 * kv_heads, d, dtype=torch.float16, device="cuda")
    q, k, v = (x.requires_grad_() for x in qkv.split([heads, kv_heads, kv_heads], dim=1))
    assert not q.is_contiguous()
    check_against_reference(varlen, varlen_reference, q, k, v, cu_q, cu_k, max_q, max_k, is_causal=True)


def test_varlen_negative_control_wrong_offsets_fail():
    """Sequences cut at the wrong rows must fail the checker (it can tell the sequences apart)."""
    q, k, v, cu_q, cu_k, max_q, max_k = _packed(LENGTHS_Q, LENGTHS_K, 2, 2, 64, torch.float16)
    shifted = cu_k.clone()
    shifted[1:-1] += 3

    def wrong(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        return varlen(q, k, v, cu_q, shifted, max_q, max_k + 3, **kwargs)

    with pytest.raises(AssertionError):
        check_against_reference(wrong, varlen_reference, q, k, v, cu_q, cu_k, max_q, max_k)


def test_varlen_bad_arguments_name_the_argument():
    q, k, v, cu_q, cu_k, max_q, max_k = _packed([5, 9], [5, 9], 2, 1, 64, torch.float16, requires_grad=False)
    call = functools.partial(ops.varlen_attention_forward, is_causal=False, scale=0.125, dropout_p=0.0, seed=None)
    with pytest.raises(ValueError, match="`cu_seqlens_q` has dtype"):
        call(q, k, v, cu_q.long(), cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="`cu_seqlens_k` is on cpu"):
        call(q, k, v, cu_q, cu_k.cpu(), max_q, max_k)
    with pytest.raises(ValueError, match="`cu_seqlens_k` has 2 entries; expected 3"):
        call(q, k, v, cu_q, cu_k[:2], max_q, max_k)
    with pytest.raises(ValueError, match="`q` must have 3 dimensions"):
        call(q[None], k, v, cu_q, cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="`q` has dtype"):
        call(q.float(), k.float(), v.float(), cu_q, cu_k, max_q, max_k)
    q80, k80, v80, *_ = _packed([5, 9], [5, 9], 2, 1, 80, torch.float16, requires_grad=False)
    with pytest.raises(ValueError, match="`q` has head dim 80; the CUDA kernel supports head dims 32, 64, 96"):
        call(q80, k80, v80, cu_q, cu_k, max_q, max_k)
    q3, k2, v2, *_ = _packed([5, 9], [5, 9], 3, 2, 64, torch.float16, requires_grad=False)
    with pytest.raises(ValueError, match="`k` has 2 heads, which does not divide the 3 heads"):
        call(q3, k2, v2, cu_q, cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="`max_seqlen_q`"):
        call(q, k, v, cu_q, cu_k, -1, max_k)
    with pytest.raises(ValueError, match="`dropout_p`"):
        ops.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, False, 0.125, 1.0, 0)
    out, lse = call(q, k, v, cu_q, cu_k, max_q, max_k)
    with pytest.raises(ValueError, match="argument `lse` has dtype Float and shape"):
        ops.varlen_attention_backward(out, q, k, v, out, lse.t(), cu_q, cu_k, max_q, max_k, False, 0.125, 0.0, 0)
    with pytest.raises(ValueError, match="`grad_out` has shape"):
        ops.varlen_attention_backward(out[1:], q, k, v, out, lse, cu_q, cu_k, max_q, max_k, False, 0.125, 0.0, 0)
