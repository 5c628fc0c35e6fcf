"""kernels.varlen_attention (packed sequences) and kernels.attention_with_kv_cache (decoding) on every backend usable
here, against the per-sequence reference."""

from __future__ import annotations

import functools

import pytest
import torch

import kernels
from kernels import _backend, reference
from kernels.attention import kv_cache_mask
from kernels.testing import assert_close, available_devices, backends_for, check_against_reference

VARLEN = [(d, b) for d in available_devices() for b in backends_for("varlen_attention", d) + ["torch"]]
VARLEN_FAST = [case for case in VARLEN if case[1] != "torch"]
DECODE = [(d, b) for d in available_devices() for b in backends_for("attention_with_kv_cache", d) + ["torch"]]


def ids(case):
    return f"{case[0]}-{case[1]}"


def packed(lengths_q, lengths_k, heads, kv_heads, head_dim, device, dtype=torch.float32):
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(sum(lengths_q), heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(sum(lengths_k), kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(sum(lengths_k), kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    return q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k)


varlen_reference = reference.varlen_attention


def varlen(backend, *args, dropout_mask=None, **kwargs):
    return kernels.varlen_attention(*args, backend=backend, **kwargs)


@pytest.mark.interpret
@pytest.mark.parametrize("case", VARLEN, ids=ids)
@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_matches_reference(case, is_causal):
    """Sequences of 1, 40 and 9 queries (cross: 23, 9, 40 keys), GQA 2/1 heads; lengths straddle the tiles."""
    device, backend = case
    check_against_reference(functools.partial(varlen, backend), varlen_reference,
                            *packed([1, 40, 9], [23, 9, 40], 2, 1, 32, device), is_causal=is_causal)


def skip_unserved(backend, device, dtype):
    served = _backend.implementations("varlen_attention")[backend].dtypes.get(device, ())
    if dtype not in served:
        pytest.skip(f"backend {backend!r} does not serve {dtype} on {device} (a documented limit)")


@pytest.mark.interpret
@pytest.mark.parametrize("case", VARLEN_FAST, ids=ids)
def test_varlen_fp16_and_head_dim_80(case):
    device, backend = case
    skip_unserved(backend, device, torch.float16)
    check_against_reference(functools.partial(varlen, backend), varlen_reference,
                            *packed([33, 5], [33, 5], 2, 2, 80, device, torch.float16), is_causal=True)


@pytest.mark.interpret
@pytest.mark.parametrize("case", VARLEN_FAST, ids=ids)
def test_varlen_dropout_same_keep_mask(case):
    from kernels.triton.attention import dropout_keep_mask

    device, backend = case
    args = packed([7, 30], [12, 33], 2, 1, 16, device)
    total_q, total_k = args[0].shape[0], args[1].shape[0]
    torch.manual_seed(21)
    seed = int(torch.randint(2**31, (1,), dtype=torch.int64, device=device))
    keep = dropout_keep_mask(seed, (1, 2, total_q, total_k), 0.3, device=device)
    torch.manual_seed(21)
    check_against_reference(functools.partial(varlen, backend), varlen_reference, *args, is_causal=True,
                            dropout_p=0.3, dropout_mask=keep)


@pytest.mark.parametrize("case", VARLEN_FAST, ids=ids)
def test_varlen_bf16_gqa_and_empty_sequences(case):
    """bf16 where served; sequences of length 0 (queries or keys) give no rows / zero rows, GQA 4/2 heads."""
    device, backend = case
    skip_unserved(backend, device, torch.bfloat16)
    check_against_reference(functools.partial(varlen, backend), varlen_reference,
                            *packed([5, 0, 70, 3], [5, 4, 70, 0], 4, 2, 24, device, torch.bfloat16))


@pytest.mark.interpret
@pytest.mark.parametrize("case", VARLEN, ids=ids)
def test_varlen_equals_dense_per_sequence(case):
    """Packing two sequences gives, row for row, the dense attention of each."""
    device, backend = case
    q, k, v, cu_q, cu_k, max_q, max_k = packed([9, 20], [9, 20], 2, 2, 16, device)
    out = varlen(backend, q, k, v, cu_q, cu_k, max_q, max_k, is_causal=True)
    dense = kernels.scaled_dot_product_attention(q[9:].transpose(0, 1)[None], k[9:].transpose(0, 1)[None],
                                                 v[9:].transpose(0, 1)[None], is_causal=True, backend="torch")
    assert_close(out[9:], dense[0].transpose(0, 1).detach(), atol=2e-6, rtol=1e-5)


BAD_VARLEN = [
    ("q 4-D", dict(q=torch.randn(1, 10, 2, 16)), "`q`"),
    ("k dtype", dict(k=torch.randn(12, 2, 16).double()), "`k`"),
    ("v heads", dict(v=torch.randn(12, 1, 16)), "`v`"),
    ("cu_seqlens dtype", dict(cu_seqlens_q=torch.tensor([0.0, 10.0])), "`cu_seqlens_q`"),
    ("cu_seqlens lengths", dict(cu_seqlens_k=torch.tensor([0, 5, 12], dtype=torch.int32)), "`cu_seqlens_k`"),
    ("max_seqlen", dict(max_seqlen_q=-1), "`max_seqlen_q`"),
    ("dropout", dict(dropout_p=2.0), "`dropout_p`"),
]


@pytest.mark.parametrize("change,match", [b[1:] for b in BAD_VARLEN], ids=[b[0] for b in BAD_VARLEN])
def test_varlen_bad_inputs_name_the_argument(change, match):
    arguments = dict(q=torch.randn(10, 2, 16), k=torch.randn(12, 2, 16), v=torch.randn(12, 2, 16),
                     cu_seqlens_q=torch.tensor([0, 10], dtype=torch.int32),
                     cu_seqlens_k=torch.tensor([0, 12], dtype=torch.int32), max_seqlen_q=10, max_seqlen_k=12)
    arguments.update(change)
    positional = [arguments.pop(name) for name in ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
                                                   "max_seqlen_k")]
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.varlen_attention(*positional, **arguments)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding against a key/value cache
# ----------------------------------------------------------------------------------------------------------------------

def cache(batch, heads, kv_heads, sq, smax, head_dim, device, dtype=torch.float32):
    q = torch.randn(batch, heads, sq, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, kv_heads, smax, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, kv_heads, smax, head_dim, device=device, dtype=dtype)
    return q, k, v


@pytest.mark.interpret
@pytest.mark.parametrize("case", DECODE, ids=ids)
@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("is_causal", [True, False])
def test_decode_matches_reference(case, sq, is_causal):
    """Caches of 150 slots filled to 150, 61 and 2 (fewer than the 3 new queries: the first sees nothing); the keys
    are split in ranges (three under the interpreter) and merged."""
    device, backend = case
    q, k, v = cache(3, 4, 2, sq, 150, 32, device)
    lengths = torch.tensor([150, 61, 2], device=device)
    out = kernels.attention_with_kv_cache(q, k, v, cache_seqlens=lengths, is_causal=is_causal, backend=backend)
    keep = kv_cache_mask(sq, 150, lengths, 3, is_causal, device)
    expected = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), keep, enable_gqa=True)
    assert_close(out, expected)
    if is_causal and sq == 3:
        assert torch.equal(out[2, :, 0], torch.zeros_like(out[2, :, 0]))


@pytest.mark.interpret
@pytest.mark.parametrize("case", DECODE, ids=ids)
def test_decode_full_cache_equals_bottom_right_sdpa(case):
    """Without cache_seqlens every slot is valid; causal alignment is to the end of the cache."""
    device, backend = case
    served = kernels._backend.implementations("attention_with_kv_cache")[backend].dtypes.get(device, ())
    dtype = torch.float16 if torch.float16 in served else torch.bfloat16
    q, k, v = cache(1, 2, 1, 4, 70, 64, device, dtype)
    out = kernels.attention_with_kv_cache(q, k, v, backend=backend)
    keep = torch.ones(4, 70, dtype=torch.bool, device=device).tril(diagonal=70 - 4)
    expected = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), keep, enable_gqa=True)
    torch_low = reference.scaled_dot_product_attention(q, k, v, keep, enable_gqa=True)
    assert_close(out, expected, torch_out=torch_low)


def test_decode_bad_inputs_name_the_argument():
    q, k, v = cache(2, 4, 2, 1, 10, 16, "cpu")
    with pytest.raises(ValueError, match="`cache_seqlens`"):
        kernels.attention_with_kv_cache(q, k, v, cache_seqlens=torch.tensor([3]))
    with pytest.raises(ValueError, match="`k_cache`"):
        kernels.attention_with_kv_cache(q, torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 16))
    with pytest.raises(ValueError, match="`v_cache`"):
        kernels.attention_with_kv_cache(q, k, v[:, :, :5])


@pytest.mark.interpret
@pytest.mark.skipif(not VARLEN_FAST or VARLEN_FAST[0][1] != "triton", reason="triton backend not usable here")
def test_opcheck_varlen_and_decode():
    from kernels._ops import attention_triton  # noqa: F401

    device = VARLEN_FAST[0][0]
    q, k, v, cu_q, cu_k, max_q, max_k = packed([3, 6], [5, 2], 2, 1, 16, device)
    torch.library.opcheck(torch.ops.kernels.triton_varlen_attention.default,
                          (q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, 0.25, None))
    qd, kc, vc = cache(2, 2, 1, 2, 40, 16, device)
    torch.library.opcheck(torch.ops.kernels.triton_attention_with_kv_cache.default,
                          (qd, kc, vc, torch.tensor([40, 7], device=device), True, 0.25))


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in DECODE if c[0] == "cuda" and c[1] != "torch"], ids=ids)
def test_gpu_decode_long_cache(case):
    device, backend = case
    q, k, v = cache(4, 32, 8, 1, 16384, 128, device, torch.bfloat16)
    lengths = torch.tensor([16384, 9000, 1, 4097], device=device)
    out = kernels.attention_with_kv_cache(q, k, v, cache_seqlens=lengths, backend=backend)
    keep = kv_cache_mask(1, 16384, lengths, 4, True, device)
    expected = reference.scaled_dot_product_attention(q.float(), k.float(), v.float(), keep, enable_gqa=True)
    torch_bf16 = reference.scaled_dot_product_attention(q, k, v, keep, enable_gqa=True)
    assert_close(out, expected, torch_out=torch_bf16)


def _kv_cache_calls():
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    lengths = torch.tensor([3, 6])
    return [
        (q, k, v, None), (q, k, v, lengths), (q, k, v, lengths.int()),
        (q, k, v, lengths.float()), (q, k, v, lengths[:1]), (q, k, v, [3, 6]),  # bad cache_seqlens
        (q, k[:, :, :, :4], v, None), (q, k, v[:, :, :5], None), (q, k[:1], v[:1], None),
        (q, k[:, :1].expand(2, 3, 6, 8), v[:, :1].expand(2, 3, 6, 8), None),  # 3 heads do not divide 4
        (q, k.double(), v.double(), None), (q.int(), k.int(), v.int(), None), (q[0], k[0], v[0], None),
        (q[..., :0], k[..., :0], v[..., :0], None), (torch.nn.Parameter(q), k, v, None), (q, k, "v", None),
    ]


@pytest.mark.parametrize("index", range(len(_kv_cache_calls())))
def test_kv_cache_common_case_shortcut_only_takes_valid_calls(index):
    """The shortcut of the common decoding call never accepts a call that the full checks refuse."""
    from kernels._attention_args import _check_kv_cache_args, _kv_cache_common_case

    call = _kv_cache_calls()[index]
    try:
        _check_kv_cache_args(*call)
    except (TypeError, ValueError):
        assert not _kv_cache_common_case(*call)
    else:
        assert _kv_cache_common_case(*call) == (index < 3)  # the first three are the common case
