"""The argument checks of ``kernels.attention``'s public functions (errors name the argument; every backend sees the
same normalised arguments), and the shortcuts of the common calls that skip them (each declines any call it does not
recognise, which then takes the full checks and their errors)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn.attention.bias import CausalBias, CausalVariant

from ._ops import _scalars


class AttentionArgs(NamedTuple):
    """Validated arguments of ``scaled_dot_product_attention``; ``batch_shape`` restores the caller's leading dims."""

    q: torch.Tensor  # (B, H, Sq, D)
    k: torch.Tensor  # (B, Hkv, Sk, D)
    v: torch.Tensor  # (B, Hkv, Sk, Dv)
    attn_mask: torch.Tensor | None  # (B, H, Sq, Sk) view, bool (True = take part) or floating (added)
    dropout_p: float
    is_causal: bool
    scale: float
    enable_gqa: bool
    key_padding_mask: torch.Tensor | None  # (B, Sk) bool, True = padding
    batch_shape: tuple


def _tensor(name, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        expected = "a tensor or None" if optional else "a tensor"
        raise TypeError(f"argument `{name}` must be {expected}, got {type(value).__name__}")


def _same_device(name, value, q):
    if value.device != q.device:
        raise ValueError(f"argument `{name}` is on {value.device}; expected {q.device} (the device of `q`)")


def _dropout_and_scale(dropout_p, scale, head_dim):
    dropout_p = _scalars.dropout_p(dropout_p)
    scale = _scalars.scale(scale, optional=True)
    return dropout_p, 1.0 / math.sqrt(head_dim) if scale is None else scale


def _plain_mask(attn_mask, q, sq, sk):
    """``attn_mask`` as a plain tensor, and whether it asks for (top-left) causality instead.

    torch's attention-bias masks: ``CausalBias`` upper-left is ``is_causal``; lower-right (query ``i`` sees keys
    ``j <= i + Sk - Sq``) is materialised as a bool ``(Sq, Sk)`` keep-mask, which every backend serves (top-left and
    bottom-right agree when ``Sq == Sk``, which then is ``is_causal`` too). Another tensor subclass is read as its
    data when it adds no behaviour of its own (no ``__torch_function__`` / ``__torch_dispatch__``), else refused."""
    if isinstance(attn_mask, CausalBias):
        if (attn_mask.seq_len_q, attn_mask.seq_len_kv) != (sq, sk):
            raise ValueError(f"argument `attn_mask` is a CausalBias of (Sq, Sk) = ({attn_mask.seq_len_q}, "
                             f"{attn_mask.seq_len_kv}); expected ({sq}, {sk}) (the lengths of `q` and `k`)")
        if attn_mask.variant == CausalVariant.UPPER_LEFT or sq == sk:
            return None, True
        return attn_mask._materialize(q.device), False  # (Sq, Sk) bool, bottom-right aligned
    cls = type(attn_mask)
    torch_function = getattr(cls.__torch_function__, "__func__", cls.__torch_function__)  # unbound classmethod
    if (torch_function not in (torch.Tensor.__torch_function__.__func__, torch._C._disabled_torch_function_impl)
            or cls.__torch_dispatch__ is not torch.Tensor.__torch_dispatch__):
        raise ValueError(f"argument `attn_mask` is a {cls.__name__}, a tensor subclass with behaviour of its own; "
                         "expected a plain bool or floating tensor, or torch.nn.attention.bias.CausalBias")
    return attn_mask.as_subclass(torch.Tensor), False


def _heads(q_heads, k_heads, enable_gqa, name="k"):
    if k_heads == q_heads:
        return
    if not enable_gqa:
        raise ValueError(f"argument `{name}` has {k_heads} heads and `q` {q_heads}: pass enable_gqa=True for GQA/MQA")
    if k_heads == 0 or q_heads % k_heads != 0:
        raise ValueError(f"argument `{name}` has {k_heads} heads, which does not divide the {q_heads} heads of `q`")


def normalize_attention_args(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                             key_padding_mask=None) -> AttentionArgs:
    """Validates SDPA's arguments (errors name the argument) and normalises them for the backends.

    ``q`` ``(*batch, H, Sq, D)``, ``k`` ``(*batch, Hkv, Sk, D)``, ``v`` ``(*batch, Hkv, Sk, Dv)`` with ``Hkv == H``
    or, with ``enable_gqa``, ``Hkv`` dividing ``H``; ``attn_mask`` bool or of ``q``'s dtype (SDPA's rule),
    broadcastable to ``(*batch, H, Sq, Sk)``, or a ``torch.nn.attention.bias.CausalBias``; ``key_padding_mask`` bool
    ``(*batch, Sk)``.
    """
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        for name, value in (("q", q), ("k", k), ("v", v)):
            _tensor(name, value)
    _tensor("attn_mask", attn_mask, optional=True)
    _tensor("key_padding_mask", key_padding_mask, optional=True)
    if q.dim() < 3:
        raise ValueError(f"argument `q` has shape {tuple(q.shape)}; expected (B, H, Sq, D) (at least 3 dimensions)")
    if not q.is_floating_point():
        raise ValueError(f"argument `q` has dtype {q.dtype}; expected a floating dtype")
    batch_shape = tuple(q.shape[:-3])
    heads, sq, head_dim = q.shape[-3:]
    for name, value in (("k", k), ("v", v)):
        if value.dim() != q.dim() or tuple(value.shape[:-3]) != batch_shape:
            expected = ", ".join([*map(str, batch_shape), "Hkv", "Sk", "D" if name == "k" else "Dv"])
            raise ValueError(f"argument `{name}` has shape {tuple(value.shape)}; expected ({expected}) with the batch "
                             "dimensions of `q`")
        if value.dtype != q.dtype:
            raise ValueError(f"argument `{name}` has dtype {value.dtype}; expected {q.dtype} (the dtype of `q`)")
        _same_device(name, value, q)
    if head_dim == 0:
        raise ValueError(f"argument `q` has shape {tuple(q.shape)}; the head dimension must be at least 1")
    if k.shape[-1] != head_dim:
        raise ValueError(f"argument `k` has head dim {k.shape[-1]}; expected {head_dim} (the head dim of `q`)")
    if v.shape[-3:-1] != k.shape[-3:-1]:
        raise ValueError(f"argument `v` has shape {tuple(v.shape)}; expected (heads, Sk) = {tuple(k.shape[-3:-1])} "
                         "like `k`")
    _heads(heads, k.shape[-3], enable_gqa)
    sk = k.shape[-2]
    dropout_p, scale = _dropout_and_scale(dropout_p, scale, head_dim)
    batch = math.prod(batch_shape)
    if attn_mask is not None and type(attn_mask) is not torch.Tensor:
        attn_mask, causal_bias = _plain_mask(attn_mask, q, sq, sk)
        is_causal = is_causal or causal_bias
    if attn_mask is not None:
        _same_device("attn_mask", attn_mask, q)
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:  # SDPA's rule, the same for every backend
            raise ValueError(f"argument `attn_mask` has dtype {attn_mask.dtype}; expected bool (True = take part) or "
                             f"{q.dtype} (the dtype of `q`: a floating mask is added to the scores)")
        full = (*batch_shape, heads, sq, sk)
        try:
            attn_mask = torch.broadcast_to(attn_mask, full)
        except RuntimeError:
            raise ValueError(f"argument `attn_mask` has shape {tuple(attn_mask.shape)}, which does not broadcast to "
                             f"{full} (*batch, H, Sq, Sk)") from None
        if len(batch_shape) != 1:
            attn_mask = attn_mask.reshape(batch, heads, sq, sk)
    if key_padding_mask is not None:
        _same_device("key_padding_mask", key_padding_mask, q)
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"argument `key_padding_mask` has dtype {key_padding_mask.dtype}; expected bool "
                             "(True = padding)")
        if tuple(key_padding_mask.shape) != (*batch_shape, sk):
            raise ValueError(f"argument `key_padding_mask` has shape {tuple(key_padding_mask.shape)}; expected "
                             f"{(*batch_shape, sk)} (B, Sk)")
        if len(batch_shape) != 1:
            key_padding_mask = key_padding_mask.reshape(batch, sk)
    if len(batch_shape) != 1:  # (*batch, H, S, D) -> (B, H, S, D); 4-D inputs pass as they are
        q = q.reshape(batch, heads, sq, head_dim)
        k, v = k.reshape(batch, *k.shape[-3:]), v.reshape(batch, *v.shape[-3:])
    return AttentionArgs(q, k, v, attn_mask, dropout_p, bool(is_causal), scale, bool(enable_gqa), key_padding_mask,
                         batch_shape)


def _common_case(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, key_padding_mask):
    """:func:`normalize_attention_args` for the common call, or None for any other (which then takes the full checks
    and their errors): plain 4-D tensors ``(B, H, S, D)`` of one floating dtype and device, ``v`` shaped like ``k``
    but its head dim, no ``attn_mask``, ``key_padding_mask`` None or bool ``(B, Sk)``, float or int scalars. The
    full path costs ~3.7 us of Python per call (1 thread, measured), this one ~1."""
    if attn_mask is not None or type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor:
        return None
    q_shape, k_shape, v_shape = q.shape, k.shape, v.shape
    if len(q_shape) != 4 or len(k_shape) != 4 or len(v_shape) != 4:
        return None
    batch, heads, _, head_dim = q_shape
    kv_heads = k_shape[1]
    if (k_shape[0] != batch or v_shape[0] != batch or k_shape[3] != head_dim or head_dim == 0
            or v_shape[1] != kv_heads or v_shape[2] != k_shape[2]):
        return None
    if kv_heads != heads and not (enable_gqa and kv_heads and heads % kv_heads == 0):
        return None
    dtype, device = q.dtype, q.device
    if k.dtype != dtype or v.dtype != dtype or not q.is_floating_point() or k.device != device or v.device != device:
        return None
    if key_padding_mask is not None and (type(key_padding_mask) is not torch.Tensor
                                         or key_padding_mask.dtype != torch.bool
                                         or key_padding_mask.shape != (batch, k_shape[2])
                                         or key_padding_mask.device != device):
        return None
    if type(dropout_p) is not float and type(dropout_p) is not int or not 0.0 <= dropout_p < 1.0:
        return None
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif (type(scale) is not float and type(scale) is not int) or not math.isfinite(scale):
        return None
    return AttentionArgs(q, k, v, None, float(dropout_p), bool(is_causal), float(scale), bool(enable_gqa),
                         key_padding_mask, (batch,))


def _kv_cache_common_case(q, k_cache, v_cache, cache_seqlens) -> bool:
    """Whether a decoding call passes every check of :func:`_check_kv_cache_args` by the common case's shortcut: plain
    4-D tensors of one floating dtype and device, shapes that agree, ``cache_seqlens`` None or an int32/int64
    ``(B,)`` tensor there (the full checks cost ~5 us per call, this ~1.5)."""
    if type(q) is not torch.Tensor or type(k_cache) is not torch.Tensor or type(v_cache) is not torch.Tensor:
        return False
    q_shape, k_shape, v_shape = q.shape, k_cache.shape, v_cache.shape
    if len(q_shape) != 4 or len(k_shape) != 4 or len(v_shape) != 4:
        return False
    batch, heads, _, head_dim = q_shape
    kv_heads = k_shape[1]
    if (k_shape[0] != batch or k_shape[3] != head_dim or head_dim == 0 or v_shape[:3] != k_shape[:3]
            or kv_heads == 0 or heads % kv_heads != 0):
        return False
    dtype, device = q.dtype, q.device
    if (k_cache.dtype != dtype or v_cache.dtype != dtype or not q.is_floating_point() or k_cache.device != device
            or v_cache.device != device):
        return False
    return cache_seqlens is None or (type(cache_seqlens) is torch.Tensor and cache_seqlens.shape == (batch,)
                                     and cache_seqlens.dtype in (torch.int32, torch.int64)
                                     and cache_seqlens.device == device)


def _check_kv_cache_args(q, k_cache, v_cache, cache_seqlens) -> None:
    """The checks of :func:`attention_with_kv_cache`'s tensors; errors name the argument."""
    for name, value in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _tensor(name, value)
        if value.dim() != 4:
            raise ValueError(f"argument `{name}` has shape {tuple(value.shape)}; expected (B, heads, S, head_dim)")
    if not q.is_floating_point():
        raise ValueError(f"argument `q` has dtype {q.dtype}; expected a floating dtype")
    for name, value in (("k_cache", k_cache), ("v_cache", v_cache)):
        if value.dtype != q.dtype:
            raise ValueError(f"argument `{name}` has dtype {value.dtype}; expected {q.dtype} (the dtype of `q`)")
        _same_device(name, value, q)
        if value.shape[0] != q.shape[0]:
            raise ValueError(f"argument `{name}` has batch {value.shape[0]}; expected {q.shape[0]} (the batch of `q`)")
    if q.shape[-1] == 0 or k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"argument `k_cache` has head dim {k_cache.shape[-1]}; expected {q.shape[-1]} (the head dim "
                         "of `q`, >= 1)")
    if v_cache.shape[:3] != k_cache.shape[:3]:
        raise ValueError(f"argument `v_cache` has shape {tuple(v_cache.shape)}; expected (B, Hkv, Smax) = "
                         f"{tuple(k_cache.shape[:3])} like `k_cache`")
    _heads(q.shape[1], k_cache.shape[1], True, name="k_cache")
    if cache_seqlens is not None:
        _tensor("cache_seqlens", cache_seqlens)
        if cache_seqlens.shape != (q.shape[0],) or cache_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"argument `cache_seqlens` has shape {tuple(cache_seqlens.shape)} and dtype "
                             f"{cache_seqlens.dtype}; expected ({q.shape[0]},) int32 or int64")
        _same_device("cache_seqlens", cache_seqlens, q)
