"""The Triton residual_add as the custom op kernels::triton_residual_add, with its fake implementation and autograd."""

from __future__ import annotations

import torch

from ..triton import residual_add as launcher


@torch.library.custom_op("kernels::triton_residual_add", mutates_args=())
def residual_add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return launcher.residual_add(x, residual)


@residual_add.register_fake
def _(x, residual):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward(ctx, grad):
    return grad, grad


residual_add.register_autograd(_backward)
