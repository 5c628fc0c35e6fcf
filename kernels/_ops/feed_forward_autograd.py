"""The composite ops ``kernels::<backend>_linear`` and ``kernels::<backend>_feed_forward`` with their fake
implementations and autograd, built once per backend from that backend's three primitives (registered ops):

* ``forward(x, weight, bias, activation, dropout_p, seed, residual, save_pre) -> (out, pre)``: the GEMM with its
  epilogues (kernels/triton/linear.py documents the semantics);
* ``act_backward(grad, weight, pre, activation, dropout_p, seed) -> (grad_pre, grad_bias fp32)``: the activation and
  dropout derivative in the epilogue of ``grad @ weight`` (or of ``grad`` itself when ``weight`` is None), with the
  bias gradient;
* ``matmul(a, b) -> a @ b`` for the weight and input gradients;
* optionally ``weight_grad(grad, x, bias) -> (grad.T @ x, column sums of grad (fp32) or anything when not bias)``:
  a Linear's weight gradient with its bias gradient reduced in the same GEMM (native: cuBLASLt's BGRADB epilogue);
  by default ``matmul`` and a separate sum.

All tensors here are 2-D: the public functions flatten the leading dimensions. The backward only calls registered ops,
so AOTAutograd traces it under ``torch.compile``.

``define`` also returns the ops' plain implementations (``linear_eager``, ``feed_forward_eager``: the same Python
bodies, not wrapped). In eager inference, where no input needs a gradient, the public functions call those and skip
torch.library's custom-op dispatch, which costs ~150 us of Python per call (measured on a (8, 64) x (64, 64) linear:
kernels.linear 200 us against F.linear's 8 us).
"""

from typing import Callable, NamedTuple, Optional

import torch

from ..reference import GATED_ACTIVATIONS


def _width_out(weight: torch.Tensor, activation: Optional[str]) -> int:
    return weight.shape[0] // 2 if activation in GATED_ACTIVATIONS else weight.shape[0]


def _column_sums(grad: torch.Tensor) -> torch.Tensor:
    """The bias gradient of a Linear without activation, accumulated in fp32 (fp64 for fp64)."""
    return grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))


class CompositeOps(NamedTuple):
    linear: Callable  # the registered ops (autograd, fakes)
    feed_forward: Callable
    linear_eager: Callable  # their implementations, for eager calls that need no gradient
    feed_forward_eager: Callable


def define(backend: str, forward: Callable, act_backward: Callable, matmul: Callable,
           weight_grad: Optional[Callable] = None) -> CompositeOps:
    """Registers ``kernels::{backend}_linear`` and ``kernels::{backend}_feed_forward``; returns them with their
    implementations."""
    if weight_grad is None:
        def weight_grad(grad, x, bias):
            return matmul(grad.t(), x), (_column_sums(grad) if bias else None)

    def linear_eager(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
                     save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
        seed = torch.zeros(1, dtype=torch.int64, device=x.device)
        return forward(x, weight, bias, activation, 0.0, seed, None, save_pre and activation is not None)

    linear = torch.library.custom_op(f"kernels::{backend}_linear", linear_eager, mutates_args=())

    @linear.register_fake
    def _(x, weight, bias, activation, save_pre):
        pre_rows = x.shape[0] if save_pre and activation is not None else 0
        return (x.new_empty((x.shape[0], _width_out(weight, activation))),
                x.new_empty((pre_rows, weight.shape[0])))

    def linear_setup(ctx, inputs, output):
        x, weight, bias, activation, _save_pre = inputs
        ctx.activation = activation
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(x, weight, output[1])
        # `pre` is internal (saved for the backward, never differentiated): no (M, width) zeros for its gradient.
        ctx.set_materialize_grads(False)

    def linear_backward(ctx, grad_out, _grad_pre):
        if grad_out is None:
            return None, None, None, None, None
        x, weight, pre = ctx.saved_tensors
        has_bias = ctx.bias_dtype is not None
        if ctx.activation is None:  # the bias gradient comes with the weight gradient's GEMM
            grad_pre = grad_out
            grad_w, grad_bias = weight_grad(grad_out, x, has_bias)  # (N, K), (N,)
        else:
            seed = torch.zeros(1, dtype=torch.int64, device=x.device)
            grad_pre, grad_bias = act_backward(grad_out, None, pre, ctx.activation, 0.0, seed)
            grad_w = matmul(grad_pre.t(), x)  # (N, K)
        grad_x = matmul(grad_pre, weight)  # (M, K)
        grad_b = grad_bias.to(ctx.bias_dtype) if has_bias else None
        return grad_x, grad_w, grad_b, None, None

    linear.register_autograd(linear_backward, setup_context=linear_setup)

    def feed_forward_eager(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                           b2: Optional[torch.Tensor], activation: Optional[str], dropout_p: float, seed: torch.Tensor,
                           residual: Optional[torch.Tensor], save_pre: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # h = dropout(act(x @ w1.T + b1)): (M, ffn); pre = x @ w1.T + b1: (M, ffn or 2 ffn), kept for the backward.
        h, pre = forward(x, w1, b1, activation, dropout_p, seed, None, save_pre)
        out, _ = forward(h, w2, b2, None, 0.0, seed, residual, False)  # (M, d_out)
        return out, h, pre

    feed_forward = torch.library.custom_op(f"kernels::{backend}_feed_forward", feed_forward_eager, mutates_args=())

    @feed_forward.register_fake
    def _(x, w1, b1, w2, b2, activation, dropout_p, seed, residual, save_pre):
        rows = x.shape[0]
        return (x.new_empty((rows, w2.shape[0])), x.new_empty((rows, _width_out(w1, activation))),
                x.new_empty((rows if save_pre else 0, w1.shape[0])))

    def feed_forward_setup(ctx, inputs, output):
        x, w1, b1, w2, b2, activation, dropout_p, seed, residual, _save_pre = inputs
        ctx.activation, ctx.dropout_p = activation, dropout_p
        ctx.dtypes = (None if b1 is None else b1.dtype, None if b2 is None else b2.dtype)
        ctx.has_residual = residual is not None
        _out, h, pre = output
        ctx.save_for_backward(x, w1, w2, seed, h, pre)
        # h and pre are internal (saved for the backward): no (M, ffn) zeros for their gradients (measured: two 512 x
        # 512 fills per layer, ~4% of a small CPU training step).
        ctx.set_materialize_grads(False)

    def feed_forward_backward(ctx, grad_out, _grad_h, _grad_pre):
        if grad_out is None:
            return (None,) * 10
        x, w1, w2, seed, h, pre = ctx.saved_tensors
        b1_dtype, b2_dtype = ctx.dtypes
        # Second Linear: grad_w2 = grad_out.T @ h (d_out, ffn), grad_b2 = column sums of grad_out.
        grad_w2, grad_b2 = weight_grad(grad_out, h, b2_dtype is not None)
        grad_b2 = None if b2_dtype is None else grad_b2.to(b2_dtype)
        # The activation and dropout derivatives in the epilogue of grad_out @ w2, with the bias gradient of b1.
        grad_pre, grad_bias1 = act_backward(grad_out, w2, pre, ctx.activation, ctx.dropout_p, seed)
        grad_x = matmul(grad_pre, w1)  # (M, d)
        grad_w1 = matmul(grad_pre.t(), x)  # (ffn or 2 ffn, d)
        grad_b1 = None if b1_dtype is None else grad_bias1.to(b1_dtype)
        grad_residual = grad_out if ctx.has_residual else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, grad_residual, None

    feed_forward.register_autograd(feed_forward_backward, setup_context=feed_forward_setup)
    return CompositeOps(linear, feed_forward, linear_eager, feed_forward_eager)
