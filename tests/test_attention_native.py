"""Tests specific to the native attention backend (kernels/_ops/attention_native.py, csrc/cpu/attention.cpp,
csrc/cuda/attention*.cu): fp64 gradcheck of the C++ CPU kernels, opcheck, the dropout RNG (the same keep-mask as
Triton's tl.rand: tests/test_attention_native_dropout.py), argument checks of the C++ ops, and the reference cases on
the native backend.

The shared attention test-suite (tests/test_attention.py) holds every backend to the same cases; these add what only
the native kernels have (their ops' signatures, masks passed as stride-0 views, the edges of the CPU kernel's query
blocks (128 rows forward, 64 backward) and 128-key blocks and of the CUDA kernels' 64-row tiles).
"""

from __future__ import annotations

import pytest
import torch
from _attention_native_cases import mask_kwargs, native_attention, padding_mask, qkv_inputs

from kernels import reference
from kernels._extension import has_native_kernel
from kernels.testing import assert_close, check_against_reference

pytestmark = pytest.mark.skipif(not has_native_kernel("attention_forward", "cpu"),
                                reason="kernels._C lacks the native attention kernels")

if has_native_kernel("attention_forward", "cpu"):
    from kernels._ops import attention_native as native

ops = torch.ops.kernels


# ----------------------------------------------------------------------------------------------------------------------
# Against the reference (sizes straddle the CPU kernel's 128- and 64-row query and 128-key blocks)
# ----------------------------------------------------------------------------------------------------------------------

SHAPES = [  # b, h, hkv, sq, sk, d
    (1, 1, 1, 1, 1, 16),
    (2, 4, 2, 17, 33, 40),     # GQA, cross-attention, head dim not a multiple of the vector panel
    (1, 2, 1, 130, 203, 64),   # MQA, partial blocks on both sides
    (2, 2, 2, 65, 129, 80),
    (1, 1, 1, 70, 40, 128),    # more queries than keys (causal rows past Sk see every key)
]
MASKS = ["none", "causal", "padding", "bool", "float", "causal+padding+bool"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASKS)
def test_matches_reference_fp32(shape, kind):
    b, h, hkv, sq, sk, d = shape
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, enable_gqa=True,
                            **mask_kwargs(kind, b, h, sq, sk, torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["none", "causal+padding+bool", "float"])
def test_matches_reference_dtypes(dtype, kind):
    b, h, hkv, sq, sk, d = 2, 4, 2, 37, 150, 64
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d, dtype)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, enable_gqa=True,
                            **mask_kwargs(kind, b, h, sq, sk, dtype))


@pytest.mark.parametrize("lengths", [(300, 141, 17), (0, 159, 290), (288, 144, 32)],
                         ids=["suffix", "prefix", "panel-aligned"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_padding_runs_trim_the_key_blocks(lengths, is_causal):
    """Right- and left-padded batches: the kernels narrow each 128-key block to its unpadded keys (whole 16-key
    panels) and causal tiles to the keys their rows see; the keys trimmed away or kept must not change the result.
    Panel-aligned lengths leave ranges with no padding key at all, which skip the padding bias (the unmasked path)."""
    sk = 300
    padding = torch.zeros(3, sk, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if n == 0:
            padding[b, :150] = True  # prefix padding, first visible key mid-block
        else:
            padding[b, n:] = True
    q, k, v = qkv_inputs(3, 2, 2, sk, sk, 16)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, is_causal=is_causal,
                            key_padding_mask=padding)


@pytest.mark.parametrize("scale", [0.3, -0.3])
def test_negative_scale(scale):
    """A negative scale flips which score is the row maximum (the unmasked fast path needs scale > 0)."""
    q, k, v = qkv_inputs(1, 2, 2, 33, 140, 16)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, scale=scale)


@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1.0), (torch.bfloat16, 30.0)])
def test_scale_and_large_magnitudes(dtype, magnitude):
    q, k, v = qkv_inputs(1, 2, 2, 40, 70, 32, dtype)
    with torch.no_grad():  # sharp softmax rows: scores in the hundreds
        q.mul_(magnitude)
        k.mul_(magnitude)
    out = check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, scale=0.3)
    assert torch.isfinite(out).all()


def _mask_of_layout(layout, sq, sk):
    if layout == "bool":
        return torch.rand(sq, sk) < 0.7
    if layout == "bool-transposed":  # key stride sq
        return (torch.rand(sk, sq) < 0.7).t()
    if layout == "bool-key-broadcast":  # key stride 0
        return (torch.rand(sq, 1) < 0.7).expand(sq, sk)
    if layout == "float32":
        return torch.randn(sq, sk)
    return torch.randn(sk, sq).t()  # float32-transposed


@pytest.mark.parametrize("layout", ["bool", "bool-transposed", "bool-key-broadcast", "float32", "float32-transposed"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_mask_layouts(layout, is_causal):
    """The CPU kernel applies unit-stride bool masks and float masks of its compute dtype in one vectorised pass (full
    vectors, then a partial one), and every other mask (strided; bf16 masks of bf16 inputs, tested with the dtypes
    above) by a scalar pass through its strides: both agree with the reference. 45 keys: five full fp32 vectors and a
    partial one."""
    sq, sk = 37, 45
    q, k, v = qkv_inputs(2, 2, 2, sq, sk, 24)
    mask = _mask_of_layout(layout, sq, sk)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, attn_mask=mask,
                            is_causal=is_causal, key_padding_mask=padding_mask(2, sk))


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    b, h, sq, sk, d = 2, 2, 9, 20, 16
    q, k, v = qkv_inputs(b, h, h, sq, sk, d)
    mask = torch.rand(b, 1, sq, sk) < 0.7
    mask[:, :, 3] = False  # query row 3 sees nothing
    padding = torch.zeros(b, sk, dtype=torch.bool)
    padding[1] = True  # every key of batch 1 is padding
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, mask, key_padding_mask=padding)
    out = native_attention(q, k, v, mask, key_padding_mask=padding)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.backward(torch.randn_like(out))
    assert torch.equal(q.grad[:, :, 3], torch.zeros_like(q.grad[:, :, 3]))
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1])) and torch.equal(v.grad[1], torch.zeros_like(v.grad[1]))
    assert not out.isnan().any()


def test_lse_of_fully_masked_rows_is_inf():
    q, k, v = qkv_inputs(1, 1, 1, 4, 6, 8, requires_grad=False)
    padding = torch.ones(1, 6, dtype=torch.bool)
    out, lse = ops.attention_forward(q, k, v, None, padding, False, 0.5, 0.0, None)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isposinf(lse).all()
    out, lse = ops.attention_forward(q, k, v, None, None, False, 0.5, 0.0, None)
    expected = torch.logsumexp(0.5 * q @ k.transpose(-2, -1), dim=-1)
    assert_close(lse, expected.double(), name="lse")


def test_non_contiguous_inputs():
    base = torch.randn(2, 50, 3, 4, 32)  # (B, S, 3, H, D): q, k, v sliced out of one packed projection
    q, k, v = (base[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, S, D) views
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q.requires_grad_(),
                            k[:, :, ::2].requires_grad_(), v[:, :, ::2].requires_grad_(), is_causal=True)
    qt = torch.randn(2, 4, 48, 30).transpose(-1, -2).requires_grad_()  # head dim of stride 30
    check_against_reference(native_attention, reference.scaled_dot_product_attention, qt, qt.detach(), qt.detach())


@pytest.mark.parametrize("shape", [(0, 2, 2, 5, 5, 8), (1, 2, 2, 0, 5, 8), (1, 2, 2, 5, 0, 8)])
def test_empty(shape):
    b, h, hkv, sq, sk, d = shape
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d)
    out = native_attention(q, k, v)
    assert out.shape == (b, h, sq, d)
    assert torch.equal(out, reference.scaled_dot_product_attention(q, k, v).detach())
    if out.numel():
        out.sum().backward()
        assert torch.equal(k.grad, torch.zeros_like(k))


@pytest.mark.parametrize("shape", [(2, 4, 2, 100, 150, 64), (1, 2, 1, 150, 1100, 32)], ids=["pairs", "key-chunks"])
def test_result_does_not_depend_on_thread_count(shape):
    q, k, v = qkv_inputs(*shape, requires_grad=False)
    grad = torch.randn_like(q)
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        out, lse = ops.attention_forward(q, k, v, None, None, True, 0.125, 0.0, None)
        results.append((out, *ops.attention_backward(grad, q, k, v, out, lse, None, None, True, 0.125, 0.0, None)))
    torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_negative_control_ignoring_the_mask_fails():
    q, k, v = qkv_inputs(1, 2, 2, 20, 30, 16)
    padding = padding_mask(1, 30)

    def ignores_padding(q, k, v, *, key_padding_mask):
        return native_attention(q, k, v)

    with pytest.raises(AssertionError):
        check_against_reference(ignores_padding, reference.scaled_dot_product_attention, q, k, v,
                                key_padding_mask=padding)


# ----------------------------------------------------------------------------------------------------------------------
# gradcheck (fp64) and opcheck of the C++ ops
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["none", "causal+padding", "float", "bool"])
def test_gradcheck_fp64(kind):
    b, h, hkv, sq, sk, d = 2, 2, 1, 5, 7, 4
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d, torch.float64)
    kwargs = mask_kwargs(kind, b, h, sq, sk, torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: native_attention(q, k, v, enable_gqa=True, **kwargs), (q, k, v))


def test_gradcheck_fp64_with_dropout():
    q, k, v = qkv_inputs(1, 2, 2, 6, 9, 4, torch.float64)
    padding = padding_mask(1, 9)

    def fn(q, k, v):
        return ops.attention_forward(q, k, v, None, padding, True, 0.4, 0.3, torch.tensor([1234]))[0]

    assert torch.autograd.gradcheck(fn, (q, k, v))


def _op_samples():
    q, k, v = qkv_inputs(2, 4, 2, 9, 13, 8, requires_grad=True)
    mask = (torch.rand(9, 13) < 0.8).expand(2, 4, 9, 13)
    float_mask = torch.randn(2, 1, 9, 13).expand(2, 4, 9, 13)
    padding = padding_mask(2, 13)
    return [
        (q, k, v, None, None, False, 0.35, 0.0, None),
        (q, k, v, mask, padding, True, 0.35, 0.0, None),
        (q, k, v, float_mask, None, False, 0.35, 0.2, torch.tensor([77])),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck_forward(sample):
    torch.library.opcheck(ops.attention_forward.default, _op_samples()[sample])


def test_opcheck_backward():
    q, k, v, mask, padding, causal, scale, p, seed = _op_samples()[1]
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = ops.attention_forward(q, k, v, mask, padding, causal, scale, p, seed)
    torch.library.opcheck(ops.attention_backward.default,
                          (torch.randn_like(out), q, k, v, out, lse, mask, padding, causal, scale, p, seed))


@pytest.mark.parametrize("kind", ["none", "causal", "causal+padding+bool", "float"])
def test_backward_splits_the_keys_of_few_sequences_into_chunks(kind):
    """One (sequence, key/value head) pair with 9 key blocks: the CPU backward splits its keys into chunks, each adding
    its dQ into a partial sum (summed in chunk order afterwards). Causal rows (150 queries) see only the first chunk's
    keys: the other chunk's query blocks are skipped and its dK, dV are zero."""
    b, h, hkv, sq, sk, d = 1, 2, 1, 150, 1100, 32
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d)
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, enable_gqa=True,
                            **mask_kwargs(kind, b, h, sq, sk, torch.float32))


def test_varlen_backward_splits_the_keys_into_chunks():
    """Two packed sequences (150 x 1100 and 40 x 60, one key/value head): the long one's keys are split into chunks,
    the short one has keys in the first chunk only."""
    cu_q = torch.tensor([0, 150, 190], dtype=torch.int32)
    cu_k = torch.tensor([0, 1100, 1160], dtype=torch.int32)
    q = torch.randn(190, 2, 32, requires_grad=True)
    k, v = (torch.randn(1160, 1, 32, requires_grad=True) for _ in range(2))

    def fn(q, k, v):
        return ops.varlen_attention_forward(q, k, v, cu_q, cu_k, 150, 1100, False, 0.2, 0.0, None)[0]

    def ref(q, k, v):
        return reference.varlen_attention(q, k, v, cu_q, cu_k, 150, 1100, scale=0.2)

    check_against_reference(fn, ref, q, k, v)


# The varlen ops: packed (T, H, D) tensors, int32 offsets (sequences of 3, 0 and 6 queries; 5, 2 and 6 keys).
def _varlen_sample(dtype=torch.float32, requires_grad=False):
    cu_q = torch.tensor([0, 3, 3, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 7, 13], dtype=torch.int32)
    q = torch.randn(9, 4, 8, dtype=dtype, requires_grad=requires_grad)
    k, v = (torch.randn(13, 2, 8, dtype=dtype, requires_grad=requires_grad) for _ in range(2))
    return q, k, v, cu_q, cu_k, 6, 6


@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_gradcheck_fp64(is_causal):
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen_sample(torch.float64, requires_grad=True)

    def fn(q, k, v):
        return ops.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, 0.4, 0.0, None)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_opcheck_varlen(dropout_p):
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen_sample(requires_grad=True)
    args = (cu_q, cu_k, max_q, max_k, True, 0.35, dropout_p, torch.tensor([5]))
    torch.library.opcheck(ops.varlen_attention_forward.default, (q, k, v, *args))
    out, lse = ops.varlen_attention_forward(q.detach(), k.detach(), v.detach(), *args)
    assert lse.shape == (4, 9)
    torch.library.opcheck(ops.varlen_attention_backward.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *args))


@pytest.mark.parametrize("change,match", [
    (dict(cu_q=torch.tensor([0, 3, 3, 9])), "`cu_seqlens_q`.*dtype"),
    (dict(cu_k=torch.tensor([0, 5, 4, 13], dtype=torch.int32)), "`cu_seqlens_k`.*non-decreasing"),
    (dict(cu_k=torch.tensor([0, 5, 7, 14], dtype=torch.int32)), "`cu_seqlens_k`.*within"),
    (dict(max_q=5), "`max_seqlen_q`"),
    (dict(cu_k=torch.tensor([0, 5, 13], dtype=torch.int32)), "`cu_seqlens_k` has 3 entries"),
])
def test_varlen_op_bad_offsets_name_the_argument(change, match):
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen_sample()
    arguments = dict(cu_q=cu_q, cu_k=cu_k, max_q=max_q)
    arguments.update(change)
    with pytest.raises(ValueError, match=match):
        ops.varlen_attention_forward(q, k, v, arguments["cu_q"], arguments["cu_k"], arguments["max_q"], max_k, False,
                                     0.35, 0.0, None)


def test_compiles_fullgraph():
    q, k, v = qkv_inputs(1, 2, 2, 10, 12, 16)
    padding = padding_mask(1, 12)
    compiled = torch.compile(lambda q, k, v: native_attention(q, k, v, is_causal=True, key_padding_mask=padding),
                             fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    assert_close(out.detach(), reference.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=True, key_padding_mask=padding).detach())
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------------------------------------------------
# Argument checks of the C++ ops (messages name the argument)
# ----------------------------------------------------------------------------------------------------------------------

def test_bad_arguments_name_the_argument():
    q, k, v = qkv_inputs(1, 4, 2, 5, 6, 8, requires_grad=False)
    with pytest.raises(ValueError, match="`q` has dtype"):
        ops.attention_forward(q.half(), k.half(), v.half(), None, None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`k` has dtype"):
        ops.attention_forward(q, k.double(), v, None, None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`v` has shape"):
        ops.attention_forward(q, k, v[:, :, :3], None, None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`k` has 3 heads"):
        ops.attention_forward(q, torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8), None, None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`k` has head dim"):
        ops.attention_forward(q, k[..., :4], v[..., :4], None, None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`mask` has shape"):
        ops.attention_forward(q, k, v, torch.ones(5, 6, dtype=torch.bool).expand(1, 1, 5, 6), None, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`key_padding_mask` has dtype"):
        ops.attention_forward(q, k, v, None, torch.zeros(1, 6), False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`key_padding_mask` has shape"):
        ops.attention_forward(q, k, v, None, torch.zeros(1, 5, dtype=torch.bool), False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="`dropout_p` must be in"):
        ops.attention_forward(q, k, v, None, None, False, 1.0, 1.0, None)
    with pytest.raises(ValueError, match="`q` must have 4 dimensions"):
        ops.attention_forward(q[0], k[0], v[0], None, None, False, 1.0, 0.0, None)


def test_unsupported_calls_name_the_argument():
    q, k, v = qkv_inputs(1, 2, 2, 5, 6, 8, requires_grad=False)
    assert native.unsupported(q=q, k=k, v=v) is None
    assert "`v` has head dim" in native.unsupported(q=q, k=k, v=torch.randn(1, 2, 6, 4))
    big = torch.randn(1, 1, 2, 300)
    assert "head dim 300" in native.unsupported(q=big, k=big, v=big)
    mask = torch.randn(5, 6, requires_grad=True)
    assert "`attn_mask` requires grad" in native.unsupported(q=q, k=k, v=v, attn_mask=mask)


# ----------------------------------------------------------------------------------------------------------------------
# GPU tier (CUDA kernels)
# ----------------------------------------------------------------------------------------------------------------------

CUDA_CASES = [  # b, h, hkv, sq, sk, d
    (2, 8, 2, 1000, 1000, 64),
    (1, 4, 4, 257, 2049, 128),
    (3, 2, 1, 77, 33, 64),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["none", "causal", "padding", "bool", "float"])
def test_cuda_forward_matches_reference(dtype, shape, kind):
    b, h, hkv, sq, sk, d = shape
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d, dtype, "cuda", requires_grad=False)
    kwargs = {key: value.cuda() if isinstance(value, torch.Tensor) else value
              for key, value in mask_kwargs(kind, b, h, sq, sk, dtype).items()}
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, enable_gqa=True, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["none", "causal+padding+bool", "float"])
def test_cuda_backward_matches_reference(dtype, shape, kind):
    # The CUDA backward kernels are called through the op's autograd (the registry's check still keeps "auto" off
    # them until this test has passed on a GPU).
    b, h, hkv, sq, sk, d = shape
    q, k, v = qkv_inputs(b, h, hkv, sq, sk, d, dtype, "cuda")
    kwargs = {key: value.cuda() if isinstance(value, torch.Tensor) else value
              for key, value in mask_kwargs(kind, b, h, sq, sk, dtype).items()}
    check_against_reference(native_attention, reference.scaled_dot_product_attention, q, k, v, enable_gqa=True, **kwargs)


@pytest.mark.gpu
def test_cuda_backward_is_deterministic():
    q, k, v = qkv_inputs(2, 8, 2, 700, 900, 128, torch.bfloat16, "cuda")
    grad = torch.randn_like(q)
    first = torch.autograd.grad(native_attention(q, k, v, enable_gqa=True), (q, k, v), grad)
    for _ in range(50):
        again = torch.autograd.grad(native_attention(q, k, v, enable_gqa=True), (q, k, v), grad)
        assert all(torch.equal(a, b) for a, b in zip(again, first))


@pytest.mark.gpu
def test_cuda_forward_is_deterministic():
    q, k, v = qkv_inputs(2, 8, 8, 1024, 1024, 128, torch.bfloat16, "cuda", requires_grad=False)
    first = native_attention(q, k, v, is_causal=True)
    for _ in range(50):
        assert torch.equal(native_attention(q, k, v, is_causal=True), first)


@pytest.mark.gpu
def test_cuda_dropout_keep_mask_matches_cpu():
    b, h, sq, sk, d, p, seed = 1, 2, 100, 300, 64, 0.3, 4242
    q, k, v = qkv_inputs(b, h, h, sq, sk, d, torch.float16, "cuda")
    keep = native.dropout_keep_mask(seed, (b, h, sq, sk), p).cuda()

    def fn(q, k, v):
        return ops.attention_forward(q, k, v, None, None, False, d ** -0.5, p, torch.tensor([seed], device=q.device))[0]

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, dropout_p=p, dropout_mask=keep)

    check_against_reference(fn, ref, q, k, v)
