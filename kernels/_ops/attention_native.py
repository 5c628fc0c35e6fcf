"""Fake implementations for the C++ ops kernels::attention_forward / kernels::attention_backward (schemas in
csrc/ops.cpp, kernels in csrc/cpu/attention.cpp and csrc/cuda/attention*.cu; their autograd in csrc/autograd/), the
backward ops' second derivatives, and the ``native`` backend of ``kernels.scaled_dot_product_attention``.

The masks reach the kernels combined but never expanded: ``attn_mask`` as a ``(B, H, Sq, Sk)`` broadcast view (stride
0 where it broadcasts), ``is_causal`` as a flag (top-left aligned), ``key_padding_mask`` as a bool ``(B, Sk)``.
Dropout uses Philox4x32-10 keyed by a 64-bit seed drawn from the generator of q's device once per forward (a
one-element int64 tensor that the kernels read, saved for the backward), with the counter ``((b*H + h)*Sq + i)*Sk + j`` -- the numbers of Triton's ``tl.rand(seed, offset)`` -- and
keeps an element when its uniform number is ``>= dropout_p``; :func:`dropout_keep_mask` rebuilds that keep-mask.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .._extension import _C
from . import _attention_derivatives, _direct, _double_backward
from ._dropout import draw_seed

FORWARD = "kernels::attention_forward"
BACKWARD = "kernels::attention_backward"
VARLEN_FORWARD = "kernels::varlen_attention_forward"
VARLEN_BACKWARD = "kernels::varlen_attention_backward"

if _C is not None:

    @torch.library.register_fake(FORWARD)
    def _(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed):
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)

    @torch.library.register_fake(BACKWARD)
    def _(grad_out, q, k, v, out, lse, mask, key_padding_mask, is_causal, scale, dropout_p, seed):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    # Autograd of the forward ops: C++ (csrc/autograd/attention.cpp, varlen_attention.cpp); here the backward ops'
    # second derivatives.
    def _first_derivative(grad_out, q, k, v, out, lse, mask, key_padding_mask, is_causal, scale, dropout_p, seed):
        return _attention_derivatives.dense(grad_out=grad_out, q=q, k=k, v=v, mask=mask,
                                            key_padding_mask=key_padding_mask, is_causal=is_causal, scale=scale,
                                            dropout_p=dropout_p)

    _double_backward.register(BACKWARD, _first_derivative, "kernels.scaled_dot_product_attention")

    # Packed sequences: q (Tq, H, D), k/v (Tk, Hkv, D); lse (H, Tq).
    @torch.library.register_fake(VARLEN_FORWARD)
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale, dropout_p, seed):
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)

    @torch.library.register_fake(VARLEN_BACKWARD)
    def _(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
          dropout_p, seed):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _varlen_first_derivative(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                 is_causal, scale, dropout_p, seed):
        return _attention_derivatives.varlen(grad_out=grad_out, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q,
                                             cu_seqlens_k=cu_seqlens_k, is_causal=is_causal, scale=scale,
                                             dropout_p=dropout_p)

    _double_backward.register(VARLEN_BACKWARD, _varlen_first_derivative, "kernels.varlen_attention")
    _forward = _direct.forward_op("attention_forward")
    _varlen_forward = _direct.forward_op("varlen_attention_forward")
else:

    def _forward(*args):
        raise RuntimeError("kernels::attention_forward is not in this build of kernels._C")

    _varlen_forward = _forward


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, key_padding_mask=None):
    """The ``native`` backend, with the torch backend's call signature (arguments validated by the caller). From
    ``kernels.scaled_dot_product_attention`` the masks arrive normalised (``attn_mask`` a ``(B, H, Sq, Sk)`` view of
    bool or ``q``'s dtype, ``key_padding_mask`` bool) and the call is one dispatcher call (the autograd is C++)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if attn_mask is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)  # before the expand: converts the small tensor only
        if attn_mask.shape != full:
            attn_mask = attn_mask.expand(full)  # a view: broadcast dimensions get stride 0
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask.bool()
    out, _ = _forward(q, k, v, attn_mask, key_padding_mask, bool(is_causal), scale, float(dropout_p),
                      draw_seed(dropout_p, q.device))
    return out


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal, scale,
                     dropout_p):
    """The ``native`` backend of ``kernels.varlen_attention`` (arguments validated by the caller). The offsets reach
    the kernels as int32; dropout draws its seed as the dense op does."""
    if cu_seqlens_q.dtype != torch.int32:  # a no-op .to still costs ~0.5 us
        cu_seqlens_q = cu_seqlens_q.to(torch.int32)
    if cu_seqlens_k.dtype != torch.int32:
        cu_seqlens_k = cu_seqlens_k.to(torch.int32)
    out, _ = _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                             dropout_p, draw_seed(dropout_p, q.device))
    return out


def varlen_unsupported(q=None, k=None, v=None, **_) -> str | None:
    """Why the native backend cannot serve a varlen call, or None: the dense limits, on (T, H, D) tensors."""
    if q is None or k is None or v is None:
        return None
    reason = _head_dims_unsupported(q, v)
    if reason is None and q.is_cuda:
        return _cuda_unsupported(q, k, v)
    return reason


def _head_dims_unsupported(q, v) -> str | None:
    head_dim = q.shape[-1]
    if v.shape[-1] != head_dim:
        return (f"argument `v` has head dim {v.shape[-1]} and `q` {head_dim}; backend 'native' needs equal "
                "head dims")
    if head_dim > 256:
        return f"argument `q` has head dim {head_dim}; backend 'native' supports head dims up to 256"
    return None


def unsupported(q=None, k=None, v=None, attn_mask=None, **_) -> str | None:
    """Why the native backend cannot serve a call, or None (the registry's ``check=``)."""
    if q is None or k is None or v is None:
        return None
    reason = _head_dims_unsupported(q, v)
    if reason is not None:
        return reason
    if q.dim() != 4:
        return f"argument `q` has {q.dim()} dimensions; backend 'native' takes (B, H, S, D) tensors"
    if attn_mask is not None and attn_mask.requires_grad:
        return "argument `attn_mask` requires grad; backend 'native' does not differentiate the mask"
    if q.is_cuda:
        return _cuda_unsupported(q, k, v)
    return None


_CUDA_HEAD_DIMS = (32, 64, 96, 128, 256)


def _cuda_unsupported(q, k, v) -> str | None:
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 8:  # the kernels use sm_80's mma.sync (bf16) and cp.async
        return (f"argument `q` is on a GPU of compute capability {major}.{minor}; backend 'native' on cuda needs "
                "8.0 or newer")
    if q.shape[-1] not in _CUDA_HEAD_DIMS:
        return (f"argument `q` has head dim {q.shape[-1]}; backend 'native' on cuda supports head dims "
                f"{', '.join(map(str, _CUDA_HEAD_DIMS))}")
    if (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and os.environ.get("KERNELS_NATIVE_CUDA_TRAINING") != "1"):
        return ("argument `q` requires grad; backend 'native' serves CUDA inference only until its backward kernels "
                "have passed the GPU tier (KERNELS_NATIVE_CUDA_TRAINING=1 runs them: benchmarks/gpu_check.sh does)")
    return None


# ----------------------------------------------------------------------------------------------------------------------
# The dropout keep-mask of a seed (for tests: the reference takes it as `dropout_mask=`)
# ----------------------------------------------------------------------------------------------------------------------

def _philox_first_word(seed: int, offset: np.ndarray) -> np.ndarray:
    """Philox4x32-10 (Triton's constants and key schedule): the first output word for counters (offset, 0, 0)."""
    c0 = (offset & 0xFFFFFFFF).astype(np.uint64)
    c1 = (offset >> 32).astype(np.uint64)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    low = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        a0, a2 = c0, c2
        b_prod = np.uint64(0xCD9E8D57) * a2  # 32 x 32 -> 64 bits, exact in uint64
        a_prod = np.uint64(0xD2511F53) * a0
        c0 = (b_prod >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        c2 = (a_prod >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c1 = b_prod & low
        c3 = a_prod & low
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0.astype(np.uint32)


def dropout_uniform(seed: int, shape) -> torch.Tensor:
    """The fp32 uniform numbers in [0, 1) of Triton's ``tl.rand(seed, offset)`` for every element of a
    ``(B, H, Sq, Sk)`` tensor, with ``offset = ((b*H + h)*Sq + i)*Sk + j`` (the row-major element index)."""
    count = math.prod(shape)
    x = _philox_first_word(int(seed), np.arange(count, dtype=np.int64)).view(np.int32)
    x = np.where(x < 0, ~x, x)
    uniform = x.astype(np.float32) * np.float32(4.6566127342e-10)
    return torch.from_numpy(uniform.reshape(shape))


def dropout_keep_mask(seed: int, shape, dropout_p: float) -> torch.Tensor:
    """The bool keep-mask (True = kept) that the native kernels apply for ``seed`` on a ``(B, H, Sq, Sk)`` call."""
    return dropout_uniform(seed, shape) >= float(dropout_p)  # compared in fp32, as in the kernels
