"""The attention function and the mask function registered with ``transformers`` as ``"fused_kernels"``.

transformers (5.x) builds a model's masks once per forward through ``AttentionMaskInterface`` and hands each attention
module's query, key and value to the function of ``AttentionInterface`` named by ``config._attn_implementation``;
both are public registries, so nothing of transformers is patched.

The mask function, :func:`fused_kernels_mask`, keeps masks lean. When the mask is the model's plain causal or
bidirectional pattern (no packing, no extra mask functions) with the queries at the end of the keys, it returns
``None`` (no padding) or the ``(B, Sk)`` padding mask itself (bool, True = take part: transformers' own 2-D
convention, as its flash-attention mask function does). Anything else -- sliding windows that bite, packed sequences,
or/and mask functions, static caches whose queries are not the last keys -- is built densely by transformers'
``sdpa_mask`` (4-D bool, causality included), so no pattern is ever lost.

The attention function, :func:`fused_kernels_attention`, reads that mask back:

* ``None`` or ``(B, Sk)``: causality from ``is_causal`` (the keyword, else ``module.is_causal``), padding as
  ``key_padding_mask`` -- never a dense ``(B, H, Sq, Sk)`` mask. With a cache (``Sq < Sk``) causality is
  bottom-right: the decoding step without padding runs ``kernels.attention_with_kv_cache``; with padding (left
  padding in batched generation) or a gradient, ``kernels.scaled_dot_product_attention`` with a ``(Sq, Sk)``
  bottom-right mask shared by the batch and the heads.
* a 4-D mask (ours from ``sdpa_mask``, or one the caller made): ``attn_mask`` as it is, bool or additive; a
  ``(B, 1, 1, Sk)`` bool mask is padding only and goes as ``key_padding_mask``.
* packed batches (``cu_seq_lens_q`` / ``cu_seq_lens_k`` / ``max_length_q`` / ``max_length_k``, batch 1):
  ``kernels.varlen_attention``.
* ``output_attentions=True``: the plain PyTorch computation, which returns the weights (as ``need_weights`` does).

GQA/MQA (``Hkv`` dividing ``H``), ``scaling`` and ``dropout`` (training) pass through. The backend is the one
``transformer.swap`` stored on the module (``auto`` otherwise). Output ``(B, Sq, H, D)``, as transformers expects.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    sdpa_mask,
)

import kernels
from kernels import reference

NAME = "fused_kernels"
BACKEND_ATTRIBUTE = "_fused_kernels_backend"  # set on attention modules by transformer.swap
_UNSUPPORTED = ("softcap", "s_aux", "position_bias")


def register() -> None:
    """Registers the attention and mask functions as ``"fused_kernels"`` (idempotent)."""
    AttentionInterface.register(NAME, fused_kernels_attention)
    AttentionMaskInterface.register(NAME, fused_kernels_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Mask function
# ----------------------------------------------------------------------------------------------------------------------

def _plain_pattern(mask_function, q_offset, q_length, kv_length, local_size, allow_is_causal_skip) -> str | None:
    """"causal" or "bidirectional" when ``mask_function`` is exactly that pattern over these positions, else None."""
    if mask_function is bidirectional_mask_function:
        return "bidirectional"
    # transformers clears allow_is_causal_skip whenever it combines the base function with packing or or/and masks,
    # so with it set a sliding window is the only other pattern; a window longer than the last query's position
    # masks nothing.
    causal = mask_function is causal_mask_function or (
        allow_is_causal_skip and local_size is not None and isinstance(q_offset, int)
        and q_offset + q_length <= local_size)
    return "causal" if causal else None


def fused_kernels_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
                       attention_mask=None, local_size=None, allow_is_causal_skip=True, **kwargs):
    """transformers' mask function for ``"fused_kernels"``: None, the ``(B, Sk)`` bool padding mask, or a dense 4-D
    bool mask from ``sdpa_mask`` (see the module docstring)."""
    pattern = _plain_pattern(mask_function, q_offset, q_length, kv_length, local_size, allow_is_causal_skip)
    # The compact forms hold when the queries are the last keys (bottom-right; always so for bidirectional masks)
    # and the 2-D padding mask covers exactly the keys.
    aligned = pattern == "bidirectional" or (
        isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset + q_length == kv_offset + kv_length)
    padding_fits = attention_mask is None or (attention_mask.dim() == 2 and attention_mask.shape[-1] == kv_length
                                              and kv_offset == 0)
    if pattern is not None and aligned and padding_fits:
        if attention_mask is None:
            return None
        padding = attention_mask.bool()
        if not torch.compiler.is_compiling() and bool(padding.all()):
            return None
        return padding
    kwargs.pop("allow_is_bidirectional_skip", None)
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask, local_size=local_size,
                     allow_is_causal_skip=False, allow_is_bidirectional_skip=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Attention function
# ----------------------------------------------------------------------------------------------------------------------

def _bottom_right_causal(sq: int, sk: int, device) -> torch.Tensor:
    """(1, 1, Sq, Sk) bool, True = take part: query i is the key position sk - sq + i."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(sk - sq)[None, None]


def _with_weights(query, key, value, attn_mask, key_padding, causal, dropout, scale, training):
    """Plain PyTorch attention that also returns the weights (B, H, Sq, Sk): ``output_attentions``. ``causal`` is
    bottom-right aligned, like the kernels' paths above."""
    sq, sk = query.shape[2], key.shape[2]
    if causal:
        keep = _bottom_right_causal(sq, sk, query.device)
        attn_mask = keep if attn_mask is None else (
            attn_mask & keep if attn_mask.dtype == torch.bool else attn_mask.masked_fill(~keep, float("-inf")))
    mask = reference.attention_mask(sq, sk, attn_mask=attn_mask, key_padding_mask=key_padding, dtype=query.dtype,
                                    device=query.device)
    key, value = reference.expand_kv_heads(key, value, query.shape[1])
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(query.dtype)  # fully masked rows: zeros
    weights = torch.nn.functional.dropout(weights, dropout, training=training)
    return torch.matmul(weights, value), weights


def _varlen(query, key, value, is_causal, dropout, scale, backend, kwargs):
    """Packed batch (1, H, total, D) -> (1, total, H, D) through kernels.varlen_attention."""
    out = kernels.varlen_attention(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),  # (total, H, D) views
        kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], int(kwargs["max_length_q"]), int(kwargs["max_length_k"]),
        is_causal=is_causal, scale=scale, dropout_p=dropout, backend=backend)
    return out[None]


def fused_kernels_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                            **kwargs):
    """transformers' attention function for ``"fused_kernels"``: query ``(B, H, Sq, D)``, key/value
    ``(B, Hkv, Sk, D)``; returns ``(output (B, Sq, H, D), weights or None)``."""
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"fused_kernels attention: argument `{name}` is not supported; use "
                             "attn_implementation='sdpa' or 'eager' for this model")
    backend = getattr(module, BACKEND_ATTRIBUTE, "auto")
    is_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    sq, sk = query.shape[2], key.shape[2]
    dense = attention_mask is not None and attention_mask.dim() == 4
    if dense and attention_mask.dtype == torch.bool and attention_mask.shape[1:3] == (1, 1):
        attention_mask, dense = attention_mask[:, 0, 0, :], False  # (B, 1, 1, Sk): padding only, no causality
        is_causal = False
    key_padding = None if dense or attention_mask is None else ~attention_mask.bool()  # True = padding
    # Causality left to apply (a dense mask holds its own); a single query sees every cached key.
    causal = is_causal and not dense and sq > 1

    if kwargs.get("output_attentions"):
        out, weights = _with_weights(query, key, value, attention_mask if dense else None, key_padding, causal,
                                     dropout, scale, module.training)
        return out.transpose(1, 2).contiguous(), weights
    if (kwargs.get("cu_seq_lens_q") is not None and query.shape[0] == 1 and key_padding is None
            and kwargs.get("max_length_q") is not None):
        return _varlen(query, key, value, is_causal, dropout, scale, backend, kwargs), None
    common = {"dropout_p": dropout, "scale": scale, "enable_gqa": True, "backend": backend}
    if dense:
        out = kernels.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, **common)
    elif is_causal and sq < sk and key_padding is None and dropout == 0.0 and not torch.is_grad_enabled():
        # Decoding against the cache: flash-decoding, bottom-right aligned.
        out = kernels.attention_with_kv_cache(query, key, value, is_causal=True, scale=scale, backend=backend)
    elif causal and sq < sk:  # a few new queries with padding or a gradient: a (Sq, Sk) mask for all
        keep = _bottom_right_causal(sq, sk, query.device)
        out = kernels.scaled_dot_product_attention(query, key, value, attn_mask=keep, key_padding_mask=key_padding,
                                                   **common)
    else:
        out = kernels.scaled_dot_product_attention(query, key, value, is_causal=causal, key_padding_mask=key_padding,
                                                   **common)
    return out.transpose(1, 2).contiguous(), None
