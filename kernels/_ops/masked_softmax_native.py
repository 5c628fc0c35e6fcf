"""Fake implementations and autograd for the C++ ops kernels::masked_softmax_forward / masked_softmax_backward
(schemas in csrc/ops.cpp). The backward is the same as the Triton op's (kernels/_ops/masked_softmax_triton.py)."""

from __future__ import annotations

import torch

from .._extension import _C

FORWARD = "kernels::masked_softmax_forward"
BACKWARD = "kernels::masked_softmax_backward"


def setup_context(ctx, inputs, output):
    _, mask, scale, _ = inputs
    ctx.save_for_backward(output)
    ctx.scale = scale
    ctx.mask_shape = None if mask is None else mask.shape


def backward_with(backward_op):
    """The autograd backward of a masked softmax forward whose backward kernel is ``backward_op(grad, y, scale)``:
    ``dx = backward_op(grad, y, scale)``; a floating mask that requires grad gets ``backward_op(grad, y, 1)`` summed
    over the dimensions it is broadcast along. Shared by the native and the Triton ops."""

    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        dx = backward_op(grad, y, ctx.scale) if ctx.needs_input_grad[0] else None
        dmask = None
        if ctx.needs_input_grad[1]:
            dmask = backward_op(grad, y, 1.0).sum_to_size(ctx.mask_shape)
        return dx, dmask, None, None

    return backward


if _C is not None and hasattr(torch.ops.kernels, "masked_softmax_forward"):

    @torch.library.register_fake(FORWARD)
    def _(x, mask, scale, is_causal):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(BACKWARD)
    def _(grad, y, scale):
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    torch.library.register_autograd(
        FORWARD, backward_with(torch.ops.kernels.masked_softmax_backward),
        setup_context=setup_context)


def masked_softmax(x, mask, scale, is_causal):
    return torch.ops.kernels.masked_softmax_forward(x, mask, scale, is_causal)
