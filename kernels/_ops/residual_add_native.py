"""Fake implementation and autograd for the C++ op kernels::residual_add (schema in csrc/ops.cpp)."""

from __future__ import annotations

import torch

from .._extension import _C

OP = "kernels::residual_add"

if _C is not None:

    @torch.library.register_fake(OP)
    def _(x, residual):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _backward(ctx, grad):
        return grad, grad

    torch.library.register_autograd(OP, _backward)


def residual_add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return torch.ops.kernels.residual_add(x, residual)
