"""``kernels.residual_add(x, residual)``: ``x + residual`` in one pass, the smallest op of the package.

It carries the whole stack of an op (kernel -> launcher -> registered op -> autograd -> public function) on every
backend, and serves as the template the other ops follow.
"""

from __future__ import annotations

import torch

from . import _backend
from ._backend import Implementation

OP = "residual_add"
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _torch(x, residual):
    return x + residual


def _register() -> None:
    from ._ops import residual_add_native

    _backend.register(Implementation(OP, "torch", _torch, {"cpu": _ALL, "cuda": _ALL}))
    _backend.register(Implementation(
        OP, "native", residual_add_native.residual_add,
        {"cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16), "cuda": _CUDA_DTYPES},
    ))
    if _backend._triton_importable():
        from ._ops import residual_add_triton

        _backend.register(Implementation(
            OP, "triton", residual_add_triton.residual_add, {"cpu": (torch.float32, torch.float16), "cuda": _CUDA_DTYPES},
            notes="cpu only under TRITON_INTERPRET=1",
        ))


_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_register()


def residual_add(x: torch.Tensor, residual: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``x + residual`` (same shape, dtype and device), computed in fp32 and written in ``x.dtype``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"argument `x` must be a tensor, got {type(x).__name__}")
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"argument `residual` must be a tensor, got {type(residual).__name__}")
    if residual.shape != x.shape:
        raise ValueError(f"argument `residual` has shape {tuple(residual.shape)}; expected {tuple(x.shape)} "
                         "(the shape of `x`)")
    if residual.dtype != x.dtype:
        raise ValueError(f"argument `residual` has dtype {residual.dtype}; expected {x.dtype} (the dtype of `x`)")
    if residual.device != x.device:
        raise ValueError(f"argument `residual` is on {residual.device}; expected {x.device} (the device of `x`)")
    implementation = _backend.select(OP, backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, residual)
