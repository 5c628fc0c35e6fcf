"""The Triton masked_softmax as the custom ops kernels::triton_masked_softmax_forward / _backward, with their fake
implementations and autograd (``dx = scale * y * (dy - sum(dy * y))``; a floating mask that requires grad gets the
same with scale 1, summed over the dimensions it is broadcast along)."""

from __future__ import annotations

from typing import Optional

import torch

from ..triton import masked_softmax as launcher
from . import _double_backward
from .masked_softmax_native import backward_with, first_derivative, setup_context


@torch.library.custom_op("kernels::triton_masked_softmax_forward", mutates_args=())
def masked_softmax_forward(x: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                           is_causal: bool) -> torch.Tensor:
    return launcher.forward(x, mask, scale, is_causal)


@masked_softmax_forward.register_fake
def _(x, mask, scale, is_causal):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("kernels::triton_masked_softmax_backward", mutates_args=())
def masked_softmax_backward(grad: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    return launcher.backward(grad, y, scale)


@masked_softmax_backward.register_fake
def _(grad, y, scale):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


masked_softmax_forward.register_autograd(backward_with(masked_softmax_backward), setup_context=setup_context)
_double_backward.register(masked_softmax_backward, first_derivative, "kernels.masked_softmax")
