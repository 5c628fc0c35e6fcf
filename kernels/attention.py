"""``kernels.scaled_dot_product_attention`` (SDPA-compatible, plus ``key_padding_mask``), ``kernels.varlen_attention``
(packed sequences) and ``kernels.attention_with_kv_cache`` (decoding against a key/value cache).

Every backend receives the arguments normalised by :func:`normalize_attention_args` (the one place that validates
them, so every backend raises the same errors): 4-D ``(B, H, S, D)`` tensors, ``attn_mask`` as a ``(B, H, Sq, Sk)``
view (zero strides where it broadcasts, never materialised), ``key_padding_mask`` as bool ``(B, Sk)`` and ``scale``
as a float.

Dropout: every backend draws the Philox seed of a forward with ``_ops._dropout.draw_seed`` (one
``torch.randint(2**31, (1,))`` on the generator of ``q``'s device) and derives the keep-mask from it by the formula in
``kernels.triton.attention``'s docstring, so ``torch.manual_seed`` reproduces a run and the tests rebuild the mask.
A backend registers with ``check=lambda **a: _unsupported_by_kernels("<name>", **a)`` for the shared limits.

Causal alignment: ``scaled_dot_product_attention`` and ``varlen_attention`` align top-left like SDPA (query ``i`` sees
keys ``j <= i``); ``attention_with_kv_cache`` aligns bottom-right, to the end of each cache (query ``i`` of ``Sq`` is
the token at position ``cache_seqlens[b] - Sq + i``), which is what a decoding step needs.
"""

from __future__ import annotations

import torch

from . import _backend, reference
# The argument checks (kernels/_attention_args.py); AttentionArgs and normalize_attention_args stay importable here.
from ._attention_args import (AttentionArgs, _check_kv_cache_args, _common_case, _dropout_and_scale,  # noqa: F401
                              _heads, _kv_cache_common_case, _same_device, _tensor, normalize_attention_args)
from ._backend import Implementation
from ._ops import _fast
from ._ops._dropout import draw_seed

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA_FAST = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _unsupported_by_kernels(backend, q, k, v, attn_mask=None, **_):
    """Limits shared by the fused backends (a reason naming the argument, or None)."""
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"argument `q` has head dim {q.shape[-1]}; backend {backend!r} supports up to {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return (f"argument `v` has head dim {v.shape[-1]} and `q` {q.shape[-1]}; backend {backend!r} needs them "
                "equal")
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        return f"argument `attn_mask` requires grad; backend {backend!r} gives no gradient to the mask"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------------

def _torch_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal=False, scale=None,
                  dropout_p=0.0):
    outputs = []
    for i in range(cu_seqlens_q.numel() - 1):
        qs = q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]].transpose(0, 1)[None]  # (1, H, Sq_i, D)
        ks = k[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].transpose(0, 1)[None]
        vs = v[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].transpose(0, 1)[None]
        out = reference.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, is_causal=is_causal,
                                                     scale=scale, enable_gqa=True)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs, dim=0) if outputs else q.new_empty(q.shape)


def kv_cache_mask(sq, sk, cache_seqlens, batch, is_causal, device):
    """Bool keep-mask ``(B, 1, Sq, Sk)`` of decoding: key ``j`` is valid when ``j < cache_seqlens[b]`` and, causal,
    when ``j <= cache_seqlens[b] - Sq + i`` (bottom-right alignment)."""
    lengths = torch.full((batch,), sk, device=device) if cache_seqlens is None else cache_seqlens.to(device).long()
    j = torch.arange(sk, device=device)
    keep = j[None, None, :] < lengths[:, None, None]  # (B, 1, Sk)
    if is_causal:
        i = torch.arange(sq, device=device)
        keep = keep & (j[None, None, :] <= (lengths[:, None, None] - sq + i[None, :, None]))
    else:
        keep = keep.expand(batch, sq, sk)
    return keep[:, None]


def _torch_kv_cache(q, k_cache, v_cache, cache_seqlens, is_causal, scale):
    keep = kv_cache_mask(q.shape[2], k_cache.shape[2], cache_seqlens, q.shape[0], is_causal, q.device)
    return reference.scaled_dot_product_attention(q, k_cache, v_cache, keep, scale=scale, enable_gqa=True)


def _native_kv_cache(q, k_cache, v_cache, cache_seqlens, is_causal, scale):
    """The dense native kernels on the cache: a decoding step (one query, the newest token) sees every valid slot,
    i.e. slot ``j`` is padding when ``j >= cache_seqlens[b]``; several causal queries take the bottom-right
    keep-mask instead."""
    batch, heads, sq, smax = q.shape[0], q.shape[1], q.shape[2], k_cache.shape[2]
    mask = padding = None
    if is_causal and sq > 1:
        mask = kv_cache_mask(sq, smax, cache_seqlens, batch, True, q.device).expand(batch, heads, sq, smax)
    elif cache_seqlens is not None:
        padding = torch.arange(smax, device=q.device) >= cache_seqlens.unsqueeze(1)  # (B, Smax), True = padding
    return _native.scaled_dot_product_attention(q, k_cache, v_cache, mask, 0.0, False, scale, True,
                                                key_padding_mask=padding)


def _triton_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, *, key_padding_mask=None):
    from ._ops import attention_triton

    out, _ = attention_triton.attention(q, k, v, attn_mask, key_padding_mask, dropout_p, is_causal, scale,
                                        draw_seed(dropout_p, q.device))
    return out


def _triton_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal=False, scale=None,
                   dropout_p=0.0):
    from ._ops import attention_triton

    out, _ = attention_triton.varlen_attention(q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
                                               max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale,
                                               draw_seed(dropout_p, q.device))
    return out


def _triton_kv_cache(q, k_cache, v_cache, cache_seqlens, is_causal, scale):
    from ._ops import attention_triton

    return attention_triton.attention_with_kv_cache(q, k_cache, v_cache, cache_seqlens, is_causal, scale)


def _triton_check(**arguments):
    return _unsupported_by_kernels("triton", **arguments)


def _triton_kv_cache_check(q, k, v, **_):
    reason = _unsupported_by_kernels("triton", q, k, v)
    if reason is None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "argument `q`, `k_cache` or `v_cache` requires grad; backend 'triton' decodes for inference only"
    return reason


def _register() -> None:
    every = {"cpu": _ALL, "cuda": _ALL}
    _backend.register(Implementation("attention", "torch", reference.scaled_dot_product_attention, every,
                                     tensor_arg="q"))
    _backend.register(Implementation("varlen_attention", "torch", _torch_varlen, every, tensor_arg="q"))
    _backend.register(Implementation("attention_with_kv_cache", "torch", _torch_kv_cache, every, tensor_arg="q"))
    if not _backend._triton_importable():
        return
    triton_dtypes = {"cpu": (torch.float32, torch.float16), "cuda": _CUDA_FAST}
    notes = f"head dim <= {MAX_HEAD_DIM}; cpu only under TRITON_INTERPRET=1; fp32 dots use TF32 on GPUs"
    _backend.register(Implementation("attention", "triton", _triton_attention, triton_dtypes, tensor_arg="q",
                                     check=_triton_check, notes=notes))
    _backend.register(Implementation("varlen_attention", "triton", _triton_varlen, triton_dtypes, tensor_arg="q",
                                     check=_triton_check, notes=notes))
    _backend.register(Implementation("attention_with_kv_cache", "triton", _triton_kv_cache, triton_dtypes,
                                     tensor_arg="q", check=_triton_kv_cache_check,
                                     notes=notes + "; inference only (no autograd)"))


_register()


# ----------------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------------

def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, key_padding_mask=None, backend="auto"):
    """Attention on ``(B, H, S, D)`` tensors with ``F.scaled_dot_product_attention``'s semantics, plus a
    ``(B, Sk)`` ``key_padding_mask`` (True = padding).

    Boolean ``attn_mask``: True = take part; floating: added to the scores; broadcastable to ``(B, H, Sq, Sk)``.
    ``is_causal`` is top-left aligned (query ``i`` sees keys ``j <= i``) and, unlike SDPA, combines with
    ``attn_mask``. Fully masked query rows give zeros (and zero gradients). Dropout draws its Philox seed from torch's
    generator, so ``torch.manual_seed`` reproduces it. For decoding against a cache, see
    :func:`attention_with_kv_cache` (bottom-right alignment).
    """
    if _fast.usable(backend):  # the common call, checked and run in C++ (None: any other call)
        out = _fast.attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, key_padding_mask)
        if out is not None:
            return out
    args = _common_case(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, key_padding_mask)
    if args is None:
        args = normalize_attention_args(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                        key_padding_mask)
    implementation = _backend.select("attention", backend, device=args.q.device, dtype=args.q.dtype, q=args.q,
                                     k=args.k, v=args.v, attn_mask=args.attn_mask,
                                     key_padding_mask=args.key_padding_mask, dropout_p=args.dropout_p,
                                     is_causal=args.is_causal)
    out = implementation.fn(args.q, args.k, args.v, args.attn_mask, args.dropout_p, args.is_causal, args.scale,
                            args.enable_gqa, key_padding_mask=args.key_padding_mask)
    return out if len(args.batch_shape) == 1 else out.reshape(*args.batch_shape, *out.shape[1:])


def _check_cu_seqlens(name, cu, q):
    _tensor(name, cu)
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"argument `{name}` has shape {tuple(cu.shape)}; expected (batch + 1,)")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"argument `{name}` has dtype {cu.dtype}; expected int32 or int64")
    _same_device(name, cu, q)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal=False, scale=None,
                     dropout_p=0.0, backend="auto"):
    """Attention over packed sequences: ``q`` ``(total_q, H, D)``, ``k``/``v`` ``(total_k, Hkv, D)`` (``Hkv``
    divides ``H``), sequence ``i`` spanning rows ``cu_seqlens[i]:cu_seqlens[i + 1]``; ``max_seqlen_q``/``_k`` bound
    the sequence lengths (not checked against the offsets, which would synchronise with the GPU). Causal masking is
    top-left within each sequence. Dropout counters use ``B = 1, Sq = total_q, Sk = total_k`` (see
    ``kernels.triton.attention``)."""
    if _fast.usable(backend):
        out = _fast.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                     dropout_p)
        if out is not None:
            return out
    for name, value in (("q", q), ("k", k), ("v", v)):
        _tensor(name, value)
        if value.dim() != 3:
            raise ValueError(f"argument `{name}` has shape {tuple(value.shape)}; expected (total, heads, head_dim)")
    if not q.is_floating_point():
        raise ValueError(f"argument `q` has dtype {q.dtype}; expected a floating dtype")
    for name, value in (("k", k), ("v", v)):
        if value.dtype != q.dtype:
            raise ValueError(f"argument `{name}` has dtype {value.dtype}; expected {q.dtype} (the dtype of `q`)")
        _same_device(name, value, q)
    if q.shape[-1] == 0 or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"argument `k` has head dim {k.shape[-1]}; expected {q.shape[-1]} (the head dim of `q`, >= 1)")
    if v.shape[:2] != k.shape[:2]:
        raise ValueError(f"argument `v` has shape {tuple(v.shape)}; expected (total_k, Hkv) = {tuple(k.shape[:2])}")
    _heads(q.shape[1], k.shape[1], True)
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q)
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(f"argument `cu_seqlens_k` has {cu_seqlens_k.numel()} entries; expected "
                         f"{cu_seqlens_q.numel()} like `cu_seqlens_q`")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"argument `{name}` must be a non-negative int; got {value!r}")
    dropout_p, scale = _dropout_and_scale(dropout_p, scale, q.shape[-1])
    implementation = _backend.select("varlen_attention", backend, device=q.device, dtype=q.dtype, q=q, k=k, v=v)
    return implementation.fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal=bool(is_causal),
                             scale=scale, dropout_p=dropout_p)


def attention_with_kv_cache(q, k_cache, v_cache, *, cache_seqlens=None, is_causal=True, scale=None, backend="auto"):
    """Decoding: a few query positions against a long key/value cache, the keys split into ranges processed in
    parallel and merged (flash-decoding).

    ``q`` ``(B, H, Sq, D)``: the newest ``Sq`` tokens; ``k_cache``/``v_cache`` ``(B, Hkv, Smax, D)`` (``Hkv`` divides
    ``H``); ``cache_seqlens`` ``(B,)`` int: the number of valid cache entries of each sequence, the new tokens
    included (None: all ``Smax``). Causal alignment is bottom-right: query ``i`` is the token at position
    ``cache_seqlens[b] - Sq + i`` and sees keys ``j <= cache_seqlens[b] - Sq + i``; with ``is_causal=False`` every
    valid key. Queries that see no key give zeros. The triton backend serves inference (no autograd)."""
    if _fast.usable(backend):
        out = _fast.attention_with_kv_cache(q, k_cache, v_cache, cache_seqlens, is_causal, scale)
        if out is not None:
            return out
    if not _kv_cache_common_case(q, k_cache, v_cache, cache_seqlens):
        _check_kv_cache_args(q, k_cache, v_cache, cache_seqlens)
    if cache_seqlens is not None and not cache_seqlens.is_contiguous():
        cache_seqlens = cache_seqlens.contiguous()
    _, scale = _dropout_and_scale(0.0, scale, q.shape[-1])
    implementation = _backend.select("attention_with_kv_cache", backend, device=q.device, dtype=q.dtype, q=q,
                                     k=k_cache, v=v_cache)
    return implementation.fn(q, k_cache, v_cache, cache_seqlens, bool(is_causal), scale)


# The native backend (C++ CPU / CUDA kernels, kernels/_ops/attention_native.py).
from ._ops import attention_native as _native  # noqa: E402

_backend.register(Implementation("attention", "native", _native.scaled_dot_product_attention,
                                 {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                                  "cuda": (torch.float16, torch.bfloat16)},
                                 tensor_arg="q", check=_native.unsupported, native_op="attention_forward",
                                 notes="cuda: head dims 32, 64, 96, 128, 256; cuda kernels not yet validated on a GPU"))
_backend.register(Implementation("varlen_attention", "native", _native.varlen_attention,
                                 {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                                  "cuda": (torch.float16, torch.bfloat16)},
                                 tensor_arg="q", check=_native.varlen_unsupported,
                                 native_op="varlen_attention_forward",
                                 notes="cuda: head dims 32, 64, 96, 128, 256; cuda kernels not yet validated on a GPU"))
_backend.register(Implementation("attention_with_kv_cache", "native", _native_kv_cache,
                                 {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                                  "cuda": (torch.float16, torch.bfloat16)},
                                 tensor_arg="q", check=_native.unsupported, native_op="attention_forward",
                                 notes="the dense kernels with the valid slots as a padding mask"))
# On CUDA "auto" tries Triton first: the native CUDA kernels have not yet run on a GPU (benchmarks/NOTES.md).
for _op in ("attention", "varlen_attention", "attention_with_kv_cache"):
    _backend.set_auto_order(_op, "cuda", ("triton", "native"))
