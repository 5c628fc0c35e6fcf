"""The Triton attention as custom ops, with fake implementations and autograd:

* ``kernels::triton_attention`` -> (out, lse) and ``kernels::triton_attention_backward`` -> (dq, dk, dv);
* ``kernels::triton_varlen_attention`` -> (out, lse) and ``kernels::triton_varlen_attention_backward``;
* ``kernels::triton_attention_with_kv_cache`` -> out (inference only: no autograd).

The backward ops differentiate through the reference for second derivatives (``_attention_derivatives``).

Dropout takes ``seed``, a one-element int64 tensor on q's device drawn from torch's generator by the caller (so it
is reproducible from ``torch.manual_seed``, traced as an input by ``torch.compile`` and saved for the backward); the
kernels load it, so nothing syncs with the host.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..triton import attention as launcher
from . import _attention_derivatives, _double_backward


@torch.library.custom_op("kernels::triton_attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
              key_padding_mask: Optional[torch.Tensor], dropout_p: float, is_causal: bool, scale: float,
              seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return launcher.attention_forward(q, k, v, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed)


@attention.register_fake
def _(q, k, v, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("kernels::triton_attention_backward", mutates_args=())
def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, attn_mask: Optional[torch.Tensor],
                       key_padding_mask: Optional[torch.Tensor], dropout_p: float, is_causal: bool, scale: float,
                       seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launcher.attention_backward(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, dropout_p,
                                       is_causal, scale, seed)


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, key_padding_mask, seed)
    ctx.arguments = (dropout_p, is_causal, scale)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, attn_mask, key_padding_mask, seed = ctx.saved_tensors
    dq, dk, dv = _double_backward.call_backward(attention_backward, grad_out, q, k, v, out, lse, attn_mask,
                                                key_padding_mask, *ctx.arguments, seed)
    return dq, dk, dv, None, None, None, None, None, None


def _first_derivative(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed):
    return _attention_derivatives.dense(grad_out=grad_out, q=q, k=k, v=v, mask=attn_mask,
                                        key_padding_mask=key_padding_mask, is_causal=is_causal, scale=scale,
                                        dropout_p=dropout_p)


attention.register_autograd(_backward, setup_context=_setup)
_double_backward.register(attention_backward, _first_derivative, "kernels.scaled_dot_product_attention")


@torch.library.custom_op("kernels::triton_varlen_attention", mutates_args=())
def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                     is_causal: bool, scale: float, seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return launcher.varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                   is_causal, scale, seed)


@varlen_attention.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("kernels::triton_varlen_attention_backward", mutates_args=())
def varlen_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                              cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                              is_causal: bool, scale: float, seed: Optional[torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launcher.varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p, is_causal, scale, seed)


@varlen_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal,
      scale, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed)
    ctx.arguments = (max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale)


def _varlen_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed = ctx.saved_tensors
    dq, dk, dv = _double_backward.call_backward(varlen_attention_backward, grad_out, q, k, v, out, lse, cu_seqlens_q,
                                                cu_seqlens_k, *ctx.arguments, seed)
    return dq, dk, dv, None, None, None, None, None, None, None, None


def _varlen_first_derivative(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_p, is_causal, scale, seed):
    return _attention_derivatives.varlen(grad_out=grad_out, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q,
                                         cu_seqlens_k=cu_seqlens_k, is_causal=is_causal, scale=scale,
                                         dropout_p=dropout_p)


varlen_attention.register_autograd(_varlen_backward, setup_context=_varlen_setup)
_double_backward.register(varlen_attention_backward, _varlen_first_derivative, "kernels.varlen_attention")


@torch.library.custom_op("kernels::triton_attention_with_kv_cache", mutates_args=())
def attention_with_kv_cache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            cache_seqlens: Optional[torch.Tensor], is_causal: bool, scale: float) -> torch.Tensor:
    return launcher.decode_forward(q, k_cache, v_cache, cache_seqlens, is_causal, scale)


@attention_with_kv_cache.register_fake
def _(q, k_cache, v_cache, cache_seqlens, is_causal, scale):
    return q.new_empty(q.shape)
