"""The native CPU attention forward at decoding shapes (csrc/cpu/attention_decode.cpp): calls whose sequences have at
most 4 query rows (head dim <= 256; more than 8 rows per key/value head only over <= 64 keys) read K and V in place
instead of packing them into tiles. These tests hold that path to the reference at those shapes: every mask kind,
GQA, the bottom-right causality of a cache, cache slices and other strides, dtypes, dropout, fully masked rows, the
NaN rule (README "Non-finite values") and thread counts. The backward is the tiled one (it reads the lse the decoding
forward writes); the gradients are checked too.
"""

from __future__ import annotations

import pytest
import torch
from _attention_native_cases import mask_kwargs

import kernels
from kernels import reference
from kernels._extension import has_native_kernel
from kernels.attention import kv_cache_mask
from kernels.testing import assert_close, check_against_reference

pytestmark = pytest.mark.skipif(not has_native_kernel("attention_forward", "cpu"),
                                reason="kernels._C lacks the native attention kernels")

ops = torch.ops.kernels


def _native(q, k, v, attn_mask=None, is_causal=False, *, key_padding_mask=None):
    return kernels.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, None, q.shape[1] != k.shape[1],
                                                key_padding_mask=key_padding_mask, backend="native")


def _reference(q, k, v, attn_mask=None, is_causal=False, *, key_padding_mask=None):
    return reference.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, None, q.shape[1] != k.shape[1],
                                                  key_padding_mask=key_padding_mask)


def _inputs(b, h, hkv, sq, sk, d, dtype=torch.float32, requires_grad=True):
    return tuple(torch.randn(b, heads, s, d, dtype=dtype, requires_grad=requires_grad)
                 for heads, s in ((h, sq), (hkv, sk), (hkv, sk)))


# b, h, hkv, sq, sk, d: 1-4 query rows; key counts around the 64-key chunks and the 16-key panels; GQA and MQA;
# head dims that are (32, 64, 128, 256) and are not (20, 40, 80) a multiple of the 8-float vector.
SHAPES = [
    (1, 4, 4, 1, 41, 32),
    (1, 1, 1, 1, 1, 16),
    (2, 4, 2, 1, 64, 40),
    (2, 8, 2, 2, 65, 64),  # 8 rows per key/value head: two tiles
    (1, 6, 1, 4, 60, 20),  # 24 rows per key/value head over few keys
    (3, 2, 2, 2, 17, 128),
    (1, 2, 1, 1, 100, 256),
    (2, 2, 2, 4, 3, 80),  # more queries than keys
]
MASKS = ["none", "causal", "padding", "bool", "float", "causal+padding+bool"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASKS)
def test_matches_reference_fp32(shape, kind):
    b, h, hkv, sq, sk, d = shape
    q, k, v = _inputs(b, h, hkv, sq, sk, d)
    check_against_reference(_native, _reference, q, k, v, **mask_kwargs(kind, b, h, sq, sk, torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["none", "causal+padding+bool", "float"])
def test_matches_reference_dtypes(dtype, kind):
    b, h, hkv, sq, sk, d = 2, 4, 2, 2, 70, 40
    q, k, v = _inputs(b, h, hkv, sq, sk, d, dtype=dtype)
    check_against_reference(_native, _reference, q, k, v, **mask_kwargs(kind, b, h, sq, sk, dtype))


def test_gradcheck_fp64():
    q, k, v = _inputs(1, 2, 1, 2, 9, 8, dtype=torch.float64)
    padding = torch.tensor([[False, True, False, False, True, False, False, False, False]])
    assert torch.autograd.gradcheck(lambda q, k, v: _native(q, k, v, key_padding_mask=padding), (q, k, v))


@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("is_causal", [False, True])
def test_kv_cache_slices_with_bottom_right_causality(sq, is_causal):
    # A generation step: the (B, Hkv, Smax, D) cache read as the slice of its valid entries (row stride kept), or
    # whole with cache_seqlens; several new queries take the bottom-right causal mask.
    b, h, hkv, smax, d, length = 2, 4, 2, 96, 32, 57
    k_cache, v_cache = torch.randn(b, hkv, smax, d), torch.randn(b, hkv, smax, d)
    q = torch.randn(b, h, sq, d)
    k, v = k_cache[:, :, :length], v_cache[:, :, :length]
    assert not k.is_contiguous()
    keep = kv_cache_mask(sq, length, None, b, is_causal, q.device)  # (B, 1, Sq, Sk) bool, bottom-right
    check_against_reference(_native, _reference, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(),
                            attn_mask=keep)
    seqlens = torch.tensor([length, 23])
    out = kernels.attention_with_kv_cache(q.detach(), k_cache, v_cache, cache_seqlens=seqlens, is_causal=is_causal,
                                          backend="native")
    keep = kv_cache_mask(sq, smax, seqlens, b, is_causal, q.device)
    ref = reference.scaled_dot_product_attention(q.double(), k_cache.double(), v_cache.double(), keep,
                                                 enable_gqa=True)
    torch_out = reference.scaled_dot_product_attention(q.detach(), k_cache, v_cache, keep, enable_gqa=True)
    assert_close(out, ref, torch_out=torch_out)


def test_causal_lower_right_bias():
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = _inputs(1, 2, 2, 3, 40, 16)
    bias = causal_lower_right(3, 40)
    keep = bias._materialize(q.device)  # (3, 40) bool: query i sees keys j <= 37 + i
    check_against_reference(lambda q, k, v: _native(q, k, v, bias), lambda q, k, v: _reference(q, k, v, keep), q, k, v)


def test_strided_keys_values_and_queries():
    # k and v with a head-dim stride (read key by key through their strides), q sliced out of a packed projection.
    base = torch.randn(2, 3, 4, 24, 20)  # (B, 3, H, D, S)
    q = base[:, 0, :, :, :2].transpose(-1, -2)  # (B, H, 2, D), D stride 20
    k, v = base[:, 1].transpose(-1, -2), base[:, 2].transpose(-1, -2)  # (B, H, 20, 24)
    check_against_reference(_native, _reference, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(),
                            is_causal=True)


def test_fully_masked_rows_give_zeros_and_inf_lse():
    q, k, v = _inputs(2, 2, 2, 3, 30, 16, requires_grad=False)
    mask = torch.rand(2, 2, 3, 30) < 0.7
    mask[:, :, 1] = False  # query row 1 sees nothing
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[1] = True  # no key of batch entry 1 takes part
    out, lse = ops.attention_forward(q, k, v, mask, padding, False, 0.25, 0.0, None)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1])) and torch.isposinf(lse[:, :, 1]).all()
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isposinf(lse[1]).all()
    check_against_reference(_native, _reference, q, k, v, mask, key_padding_mask=padding)
    empty = torch.randn(2, 2, 0, 16)  # no key at all
    out, lse = ops.attention_forward(q, empty, empty, None, None, False, 0.25, 0.0, None)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isposinf(lse).all()


def test_lse_matches_logsumexp():
    q, k, v = _inputs(1, 3, 3, 2, 150, 32, requires_grad=False)
    _, lse = ops.attention_forward(q, k, v, None, None, False, 0.2, 0.0, None)
    assert_close(lse, torch.logsumexp(0.2 * q.double() @ k.double().transpose(-2, -1), dim=-1), name="lse")


# ----------------------------------------------------------------------------------------------------------------------
# Non-finite values (README): a NaN that enters a row's scores reaches that row only; hidden keys do not enter it.
# ----------------------------------------------------------------------------------------------------------------------

def test_nan_in_query_reaches_its_row_only():
    q, k, v = _inputs(1, 2, 2, 3, 70, 16, requires_grad=False)
    q[0, 1, 2, 5] = float("nan")
    out = _native(q, k, v)
    assert out[0, 1, 2].isnan().all()
    out[0, 1, 2] = 0
    assert not out.isnan().any()


@pytest.mark.parametrize("tensor", ["k", "v"])
def test_nan_in_a_seen_key_reaches_every_row_that_sees_it(tensor):
    q, k, v = _inputs(1, 4, 2, 2, 100, 16, requires_grad=False)
    (k if tensor == "k" else v)[0, 1, 77, 3] = float("nan")
    out = _native(q, k, v)
    seen = out[0, 2:] if tensor == "k" else out[0, 2:, :, 3]  # GQA: heads 2 and 3 read kv head 1; v: its column
    assert seen.isnan().all() and out.isnan().sum() == seen.numel()


@pytest.mark.parametrize("hide", ["padding", "bool", "float", "causal"])
def test_nan_in_a_hidden_key_does_not_reach_the_row(hide):
    q, k, v = _inputs(1, 2, 2, 2, 70, 16, requires_grad=False)
    k[0, :, 66] = float("nan")  # key 66: hidden from every row below
    kwargs = {}
    if hide == "padding":
        kwargs["key_padding_mask"] = torch.arange(70)[None] == 66
    elif hide == "bool":
        kwargs["attn_mask"] = (torch.arange(70) != 66).expand(2, 70)
    elif hide == "float":
        mask = torch.randn(2, 70)
        mask[:, 66] = float("-inf")
        kwargs["attn_mask"] = mask
    else:
        kwargs["is_causal"] = True  # top-left: rows 0 and 1 see keys 0 and 0..1
    out = _native(q, k, v, **kwargs)
    assert not out.isnan().any()
    k[0, :, 66] = 0.0
    assert_close(out, _reference(q.double(), k.double(), v.double(), **kwargs), torch_out=_reference(q, k, v, **kwargs))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_float_mask_value_gives_a_nan_row(value):
    q, k, v = _inputs(1, 2, 2, 2, 70, 16, requires_grad=False)
    mask = torch.randn(2, 70)
    mask[1, 40] = value
    out = _native(q, k, v, mask)
    assert out[:, :, 1].isnan().all() and not out[:, :, 0].isnan().any()


def test_inf_scores_give_a_nan_row():
    q, k, v = _inputs(1, 1, 1, 2, 20, 8, requires_grad=False)
    q[0, 0, :, 0] = torch.tensor([1.0, -1.0])
    k[0, 0, 7, 0] = float("inf")  # row 0: a score of +inf (inf - inf in the softmax); row 1: -inf, a weight of 0
    out = _native(q, k, v)
    assert out[0, 0, 0].isnan().all() and not out[0, 0, 1].isnan().any()


# ----------------------------------------------------------------------------------------------------------------------
# Dropout, threads, the edges of the path
# ----------------------------------------------------------------------------------------------------------------------

def test_dropout_matches_reference_with_the_keep_mask_of_the_seed():
    from kernels._ops import attention_native as native

    b, h, sq, sk, d, p, seed = 2, 2, 3, 140, 16, 0.25, 12345
    q, k, v = _inputs(b, h, h, sq, sk, d)
    padding = torch.rand(b, sk) < 0.3
    keep = native.dropout_keep_mask(seed, (b, h, sq, sk), p)

    def fn(q, k, v):
        return ops.attention_forward(q, k, v, None, padding, False, d ** -0.5, p, torch.tensor([seed]))[0]

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, dropout_p=p, key_padding_mask=padding,
                                                      dropout_mask=keep)

    check_against_reference(fn, ref, q, k, v)


def test_result_does_not_depend_on_thread_count():
    q, k, v = _inputs(2, 8, 2, 1, 700, 64, requires_grad=False)  # work enough for a parallel region
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(ops.attention_forward(q, k, v, None, None, False, 0.125, 0.0, None))
    finally:
        torch.set_num_threads(threads)
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


@pytest.mark.parametrize("sq,d", [(4, 64), (5, 64), (1, 264)], ids=["last-decode", "first-tiled", "wide-head"])
def test_edges_of_the_decoding_path(sq, d):
    # The op itself takes any head dim (the public call stops at 256); wider heads go to the tiled kernel.
    q, k, v = _inputs(1, 2, 1, sq, 90, d)

    def op(q, k, v):
        return ops.attention_forward(q, k, v, None, None, True, d ** -0.5, 0.0, None)[0]

    check_against_reference(op, lambda q, k, v: _reference(q, k, v, is_causal=True), q, k, v, backward=False)


def test_varlen_with_short_query_sequences():
    # Packed decoding: every sequence brings 1-3 new queries over its own keys.
    lengths_q, lengths_k = [1, 3, 2], [40, 5, 77]
    cu_q = torch.tensor([0, 1, 4, 6], dtype=torch.int32)
    cu_k = torch.tensor([0, 40, 45, 122], dtype=torch.int32)
    q, k, v = torch.randn(6, 4, 32), torch.randn(122, 2, 32), torch.randn(122, 2, 32)
    out = kernels.varlen_attention(q, k, v, cu_q, cu_k, 3, 77, backend="native")
    for i, (sq, sk) in enumerate(zip(lengths_q, lengths_k)):
        qi = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None]
        ki, vi = (x[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None] for x in (k, v))
        ref = reference.scaled_dot_product_attention(qi.double(), ki.double(), vi.double(), enable_gqa=True)
        torch_out = reference.scaled_dot_product_attention(qi, ki, vi, enable_gqa=True)
        assert_close(out[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None], ref, torch_out=torch_out)
