"""``kernels.masked_softmax``: ``softmax(scale * x + mask)`` over the last dimension in one pass.

Backends: ``torch`` (reference), ``triton`` (kernels/triton/masked_softmax.py), ``native`` (csrc/cpu/masked_softmax.cpp,
csrc/cuda/masked_softmax.cu). Every backend reads a broadcast mask in place through its strides (never expanded in
memory), computes in fp32 (fp64 for fp64 on the CPU) and gives zeros, and zero gradients, for fully masked rows.
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._backend import Implementation
from ._ops import _scalars

OP = "masked_softmax"
_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The C++ kernels index the mask with at most this many dimensions of `x`.
_NATIVE_MAX_DIM = 8


def _torch(x, mask, scale, is_causal):
    return reference.masked_softmax(x, mask, scale, is_causal)


def _check_triton(x, mask, **_):
    if mask is None:
        return None
    from .triton.masked_softmax import mask_layout

    if mask_layout(mask, x.shape) is None:
        return (f"argument `mask` (shape {tuple(mask.shape)}, strides {mask.stride()}) broadcasts over the leading "
                f"dimensions of `x` {tuple(x.shape)} in a pattern the Triton kernel cannot read in place (more than "
                "two leading dimensions after coalescing)")
    return None


def _check_native(x, mask, **_):
    if x.dim() > _NATIVE_MAX_DIM:
        return f"argument `x` has {x.dim()} dimensions; backend 'native' supports at most {_NATIVE_MAX_DIM}"
    return None


def _register() -> None:
    from ._ops import masked_softmax_native

    _backend.register(Implementation(OP, "torch", _torch, {"cpu": _ALL, "cuda": _ALL}))
    _backend.register(Implementation(
        OP, "native", masked_softmax_native.masked_softmax,
        {"cpu": (torch.float32, torch.float64, torch.bfloat16), "cuda": _CUDA_DTYPES},
        check=_check_native, native_op="masked_softmax_forward",
        notes=f"x up to {_NATIVE_MAX_DIM} dims",
    ))
    if _backend._triton_importable():
        from ._ops import masked_softmax_triton

        _backend.register(Implementation(
            OP, "triton", masked_softmax_triton.masked_softmax_forward,
            {"cpu": (torch.float32, torch.float16), "cuda": _CUDA_DTYPES},
            check=_check_triton,
            notes="cpu only under TRITON_INTERPRET=1; mask broadcast over <= 2 coalesced leading dims",
        ))


_register()


def _broadcasts_to(shape, target) -> bool:
    """Whether ``shape`` broadcasts to ``target`` (torch.broadcast_shapes costs ~10 us of Python per call)."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def _validate(x, mask, is_causal) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"argument `x` must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"argument `x` has dtype {x.dtype}; expected a floating dtype")
    if x.dim() == 0:
        raise ValueError("argument `x` must have at least 1 dimension (the softmax dimension), got a scalar")
    if not isinstance(is_causal, bool):
        raise TypeError(f"argument `is_causal` must be a bool, got {type(is_causal).__name__}")
    if is_causal and x.dim() < 2:
        raise ValueError(f"argument `is_causal` needs `x` with at least 2 dimensions (Sq, Sk); got shape "
                         f"{tuple(x.shape)}")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"argument `mask` must be a tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and mask.dtype != x.dtype:
        raise ValueError(f"argument `mask` has dtype {mask.dtype}; expected torch.bool (True = keep) or {x.dtype} "
                         "(additive, the dtype of `x`)")
    if mask.device != x.device:
        raise ValueError(f"argument `mask` is on {mask.device}; expected {x.device} (the device of `x`)")
    if not _broadcasts_to(mask.shape, x.shape):
        raise ValueError(f"argument `mask` has shape {tuple(mask.shape)}, which does not broadcast to the shape of "
                         f"`x` {tuple(x.shape)}")


def masked_softmax(x, mask=None, *, scale=1.0, is_causal=False, backend="auto"):
    """``softmax(scale * x + mask)`` over the last dimension of ``x`` (any leading shape).

    ``mask``: bool (True = keep, SDPA's convention) or of ``x``'s dtype (added after scaling), broadcastable to ``x``
    (e.g. ``(B, 1, 1, Sk)`` padding or ``(1, 1, Sq, Sk)``); it is read through its strides, never expanded in memory.
    ``is_causal=True`` masks ``j > i`` over the last two dimensions ``(Sq, Sk)`` (top-left aligned, as SDPA) and
    combines with ``mask``. Rows with no kept element give zeros and zero gradients, never NaN. Returns a contiguous
    tensor of ``x``'s shape and dtype; arithmetic is fp32 inside (fp64 for fp64).
    """
    _validate(x, mask, is_causal)
    scale = _scalars.scale(scale)
    implementation = _backend.select(OP, backend, device=x.device, dtype=x.dtype, x=x, mask=mask)
    return implementation.fn(x, mask, scale, is_causal)
