"""The native attention tests' shared inputs (tests/test_attention_native*.py): q/k/v, padding masks, the masks of
each kind, and the native backend called with the torch backend's signature."""

from __future__ import annotations

import torch

from kernels._extension import has_native_kernel

if has_native_kernel("attention_forward", "cpu"):
    from kernels._ops import attention_native as native


def qkv_inputs(b, h, hkv, sq, sk, d, dtype=torch.float32, device="cpu", requires_grad=True):
    q = torch.randn(b, h, sq, d, dtype=dtype, device=device, requires_grad=requires_grad)
    k = torch.randn(b, hkv, sk, d, dtype=dtype, device=device, requires_grad=requires_grad)
    v = torch.randn(b, hkv, sk, d, dtype=dtype, device=device, requires_grad=requires_grad)
    return q, k, v


def padding_mask(b, sk, device="cpu", fully_padded_row=False):
    mask = torch.rand(b, sk, device=device) < 0.3
    if fully_padded_row:
        mask[0] = True
    return mask


def native_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
                     key_padding_mask=None):
    return native.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                               key_padding_mask=key_padding_mask)


def mask_kwargs(kind, b, h, sq, sk, dtype):
    """The keyword arguments of one mask kind ("none", "causal", "padding", "bool", "float" or a "+" combination):
    padding that leaves every batch entry a key (fully padded rows have their own tests), a bool (Sq, Sk) keep-mask
    broadcast over batch and heads, an additive (B, 1, Sq, Sk) mask with -inf entries broadcast over heads."""
    kwargs = {}
    if "causal" in kind:
        kwargs["is_causal"] = True
    if "padding" in kind:
        padding = padding_mask(b, sk)
        padding[:, 0] = False
        kwargs["key_padding_mask"] = padding
    if "bool" in kind:
        kwargs["attn_mask"] = torch.rand(sq, sk) < 0.8
    if kind == "float":
        mask = torch.randn(b, 1, sq, sk, dtype=dtype)
        mask[torch.rand(b, 1, sq, sk) < 0.2] = float("-inf")
        kwargs["attn_mask"] = mask
    return kwargs
