"""``kernels.scaled_dot_product_attention`` (SDPA-compatible, plus ``key_padding_mask``) and
``kernels.varlen_attention`` (packed sequences)."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._backend import Implementation

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    return torch.cat(outputs, dim=0)


_backend.register(Implementation("attention", "torch", reference.scaled_dot_product_attention,
                                 {"cpu": _ALL, "cuda": _ALL}, tensor_arg="q"))
_backend.register(Implementation("varlen_attention", "torch", _torch_varlen, {"cpu": _ALL, "cuda": _ALL},
                                 tensor_arg="q"))


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, key_padding_mask=None, backend="auto"):
    """Attention on ``(B, H, S, D)`` tensors with ``F.scaled_dot_product_attention``'s semantics, plus a
    ``(B, Sk)`` ``key_padding_mask`` (True = padding). Fully masked query rows give zeros."""
    implementation = _backend.select("attention", backend, device=q.device, dtype=q.dtype)
    return implementation.fn(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                             key_padding_mask=key_padding_mask)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal=False, scale=None,
                     dropout_p=0.0, backend="auto"):
    """Attention over packed sequences: ``q`` ``(total_q, H, D)``, ``k``/``v`` ``(total_k, Hkv, D)``, sequence ``i``
    spanning rows ``cu_seqlens[i]:cu_seqlens[i + 1]``."""
    implementation = _backend.select("varlen_attention", backend, device=q.device, dtype=q.dtype)
    return implementation.fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal=is_causal,
                             scale=scale, dropout_p=dropout_p)


# The native backend (C++ CPU / CUDA kernels, kernels/_ops/attention_native.py).
from ._ops import attention_native as _native  # noqa: E402

_backend.register(Implementation("attention", "native", _native.scaled_dot_product_attention,
                                 {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                                  "cuda": (torch.float16, torch.bfloat16)},
                                 tensor_arg="q", check=_native.unsupported, native_op="attention_forward",
                                 notes="cuda: head dims 64, 128; cuda backward not yet validated on a GPU"))
