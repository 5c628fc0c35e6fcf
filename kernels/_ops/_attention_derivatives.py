"""The first derivative of the attention ops recomputed through ``kernels.reference`` with differentiable torch ops,
which the backward ops' autograd differentiates for second derivatives (``_double_backward``). Shared by the native
and the Triton ops (their backward ops take the same arguments in different orders, hence the keywords)."""

from __future__ import annotations

import torch

from .. import reference


def _refuse_dropout(dropout_p, op):
    if dropout_p > 0.0:
        raise RuntimeError(f"kernels.{op}: second derivatives with dropout_p > 0 are not supported (the keep-mask "
                           "lives in the kernels' Philox stream); differentiate twice with dropout_p=0")


def dense(*, grad_out, q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p):
    """``(dq, dk, dv)`` of ``scaled_dot_product_attention`` for ``grad_out``, with the graph recorded."""
    _refuse_dropout(dropout_p, "scaled_dot_product_attention")
    out = reference.scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale, enable_gqa=True,
                                                 key_padding_mask=key_padding_mask)
    return torch.autograd.grad(out, (q, k, v), grad_out, create_graph=True)


def varlen(*, grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, is_causal, scale, dropout_p):
    """``(dq, dk, dv)`` of ``varlen_attention`` for ``grad_out``, with the graph recorded (the reference walks the
    offsets on the host: second derivatives of varlen attention read ``cu_seqlens``)."""
    _refuse_dropout(dropout_p, "varlen_attention")
    out = reference.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, 0, 0, is_causal=is_causal, scale=scale)
    return torch.autograd.grad(out, (q, k, v), grad_out, create_graph=True)
