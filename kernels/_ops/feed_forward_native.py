"""Fake implementations of the C++ primitives kernels::linear_forward, kernels::linear_act_backward and
kernels::linear_weight_grad (schemas in csrc/ops.cpp), and the composite ops kernels::native_linear / kernels::native_feed_forward with autograd built on them
(kernels/_ops/feed_forward_autograd.py). Imported only when kernels._C defines the primitives."""

import torch

from ..reference import GATED_ACTIVATIONS
from . import feed_forward_autograd


@torch.library.register_fake("kernels::linear_forward")
def _(x, weight, bias, activation, dropout_p, seed, residual, save_pre):
    width = weight.shape[0]
    out_width = width // 2 if activation in GATED_ACTIVATIONS else width
    return x.new_empty((x.shape[0], out_width)), x.new_empty((x.shape[0] if save_pre else 0, width))


@torch.library.register_fake("kernels::linear_act_backward")
def _(grad, weight, pre, activation, dropout_p, seed):
    bias_dtype = torch.float64 if pre.dtype == torch.float64 else torch.float32
    return pre.new_empty(pre.shape), pre.new_empty((pre.shape[1],), dtype=bias_dtype)


@torch.library.register_fake("kernels::linear_weight_grad")
def _(grad, x, bias):
    sum_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.new_empty((grad.shape[1], x.shape[1])), grad.new_empty((grad.shape[1] if bias else 0,),
                                                                        dtype=sum_dtype)


ops = feed_forward_autograd.define("native", torch.ops.kernels.linear_forward, torch.ops.kernels.linear_act_backward,
                                   torch.mm, torch.ops.kernels.linear_weight_grad)
