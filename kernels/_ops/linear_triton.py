"""The Triton GEMM primitives as custom ops (``kernels::triton_linear_forward``, ``kernels::triton_linear_act_backward``,
``kernels::triton_matmul``) with fake implementations, and the composite ops ``kernels::triton_linear`` and
``kernels::triton_feed_forward`` with autograd built on them (kernels/_ops/feed_forward_autograd.py)."""

from typing import Optional

import torch

from ..triton import linear as launcher
from . import feed_forward_autograd


@torch.library.custom_op("kernels::triton_linear_forward", mutates_args=())
def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
                   dropout_p: float, seed: torch.Tensor, residual: Optional[torch.Tensor], save_pre: bool,
                   weight_up: Optional[torch.Tensor] = None,
                   bias_up: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return launcher.linear_forward(x, weight, bias, activation, dropout_p, seed, residual, save_pre, weight_up, bias_up)


@linear_forward.register_fake
def _(x, weight, bias, activation, dropout_p, seed, residual, save_pre, weight_up=None, bias_up=None):
    out_width, width = feed_forward_autograd._widths(weight, weight_up, activation)
    return x.new_empty((x.shape[0], out_width)), x.new_empty((x.shape[0] if save_pre else 0, width))


@torch.library.custom_op("kernels::triton_linear_act_backward", mutates_args=())
def linear_act_backward(grad: torch.Tensor, weight: Optional[torch.Tensor], pre: torch.Tensor,
                        activation: Optional[str], dropout_p: float,
                        seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return launcher.linear_act_backward(grad, weight, pre, activation, dropout_p, seed)


@linear_act_backward.register_fake
def _(grad, weight, pre, activation, dropout_p, seed):
    return pre.new_empty(pre.shape), pre.new_empty((pre.shape[1],), dtype=torch.float32)


@torch.library.custom_op("kernels::triton_matmul", mutates_args=())
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return launcher.matmul(a, b)


@matmul.register_fake
def _(a, b):
    return a.new_empty((a.shape[0], b.shape[1]))


ops = feed_forward_autograd.define("triton", linear_forward, linear_act_backward, matmul)
