"""Fake implementations for the C++ ops kernels::masked_softmax_forward / masked_softmax_backward (schemas in
csrc/ops.cpp), and the backward's second derivative. The forward's autograd is C++ (csrc/autograd/masked_softmax.cpp,
the same formula as the Triton op's :func:`backward_with`), so a call is one dispatcher call."""

from __future__ import annotations

import torch

from .._extension import _C
from . import _double_backward

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
        dx = _double_backward.call_backward(backward_op, grad, y, ctx.scale) if ctx.needs_input_grad[0] else None
        dmask = None
        if ctx.needs_input_grad[1]:
            dmask = _double_backward.call_backward(backward_op, grad, y, 1.0).sum_to_size(ctx.mask_shape)
        return dx, dmask, None, None

    return backward


def first_derivative(grad, y, scale):
    """The backward ``scale * y * (grad - sum(grad * y))`` per row, with differentiable torch ops (in fp32 at least),
    for the backward op's second derivative. ``y`` is the forward's output, so its gradient reaches the forward."""
    dtype = torch.promote_types(y.dtype, torch.float32)
    yf, gf = y.to(dtype), grad.to(dtype)
    return (scale * yf * (gf - (gf * yf).sum(-1, keepdim=True))).to(y.dtype)


if _C is not None and hasattr(torch.ops.kernels, "masked_softmax_forward"):

    @torch.library.register_fake(FORWARD)
    def _(x, mask, scale, is_causal):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(BACKWARD)
    def _(grad, y, scale):
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    _double_backward.register(BACKWARD, first_derivative, "kernels.masked_softmax")
    masked_softmax = torch.ops.kernels.masked_softmax_forward.default  # (x, mask, scale, is_causal)
else:

    def masked_softmax(x, mask, scale, is_causal):
        raise RuntimeError("kernels::masked_softmax_forward is not in this build of kernels._C")
