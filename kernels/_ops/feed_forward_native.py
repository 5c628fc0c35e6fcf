"""Fake implementations of the C++ primitives kernels::linear_forward, kernels::linear_epilogue,
kernels::linear_act_backward and kernels::linear_weight_grad (schemas in csrc/ops.cpp), and the composite ops kernels::native_linear / kernels::native_feed_forward with autograd built on them
(kernels/_ops/feed_forward_autograd.py). Imported only when kernels._C defines the primitives."""

import torch

from ..reference import GATED_ACTIVATIONS
from . import _direct, feed_forward_autograd

_linear_forward = _direct.forward_op("linear_forward")  # (x, weight, bias, activation, dropout_p, seed, residual,
#                                                          save_pre)


@torch.library.register_fake("kernels::linear_forward")
def _(x, weight, bias, activation, dropout_p, seed, residual, save_pre):
    width = weight.shape[0]
    out_width = width // 2 if activation in GATED_ACTIVATIONS else width
    return x.new_empty((x.shape[0], out_width)), x.new_empty((x.shape[0] if save_pre else 0, width))


@torch.library.register_fake("kernels::linear_epilogue")
def _(pre, activation, dropout_p, seed, residual):
    width = pre.shape[1]
    return pre.new_empty((pre.shape[0], width // 2 if activation in GATED_ACTIVATIONS else width))


@torch.library.register_fake("kernels::linear_act_backward")
def _(grad, weight, pre, activation, dropout_p, seed):
    bias_dtype = torch.float64 if pre.dtype == torch.float64 else torch.float32
    return pre.new_empty(pre.shape), pre.new_empty((pre.shape[1],), dtype=bias_dtype)


@torch.library.register_fake("kernels::linear_weight_grad")
def _(grad, x, bias):
    sum_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.new_empty((grad.shape[1], x.shape[1])), grad.new_empty((grad.shape[1] if bias else 0,),
                                                                        dtype=sum_dtype)


def _forward(x, weight, bias, activation, dropout_p, seed, residual, save_pre, weight_up=None, bias_up=None):
    """kernels::linear_forward; with a separate up projection (gated), both GEMMs write straight into the two halves
    of one (M, 2N) pre-activation (BLAS's leading dimension: no concatenated weight, no copy of either result), then
    kernels::linear_epilogue makes the output in one pass."""
    if weight_up is None:
        return _linear_forward(x, weight, bias, activation, dropout_p, seed, residual, save_pre)
    n = weight.shape[0]
    pre = torch.empty((x.shape[0], 2 * n), dtype=x.dtype, device=x.device)  # [gate, up]
    for half, w, b in ((pre[:, :n], weight, bias), (pre[:, n:], weight_up, bias_up)):
        if b is None:
            torch.mm(x, w.t(), out=half)
        else:
            torch.addmm(b, x, w.t(), out=half)
    out = torch.ops.kernels.linear_epilogue(pre, activation, dropout_p, seed, residual)
    return out, pre if save_pre else pre.new_empty((0, 2 * n))


ops = feed_forward_autograd.define("native", _forward, torch.ops.kernels.linear_act_backward, torch.mm,
                                   torch.ops.kernels.linear_weight_grad, torch.addmm)
