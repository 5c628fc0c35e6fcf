"""The composite ops ``kernels::<backend>_linear`` and ``kernels::<backend>_feed_forward`` with their fake
implementations and autograd, built once per backend from that backend's three primitives (registered ops):

* ``forward(x, weight, bias, activation, dropout_p, seed, residual, save_pre, weight_up, bias_up) -> (out, pre)``:
  the GEMM with its epilogues (kernels/triton/linear.py documents the semantics); a gated activation takes either a
  packed ``[gate; up]`` ``weight`` or the gate projection ``weight`` with a separate ``weight_up`` (Hugging Face's
  ``gate_proj`` / ``up_proj``, never concatenated), ``pre`` being ``(M, 2N)`` ``[gate, up]`` either way;
* ``act_backward(grad, weight, pre, activation, dropout_p, seed) -> (grad_pre, grad_bias fp32)``: the activation and
  dropout derivative in the epilogue of ``grad @ weight`` (or of ``grad`` itself when ``weight`` is None), with the
  bias gradient;
* ``matmul(a, b) -> a @ b`` for the weight and input gradients;
* optionally ``weight_grad(grad, x, bias) -> (grad.T @ x, column sums of grad (fp32) or anything when not bias)``:
  a Linear's weight gradient with its bias gradient reduced in the same GEMM (native: cuBLASLt's BGRADB epilogue);
  by default ``matmul`` and a separate sum.

All tensors here are 2-D: the public functions flatten the leading dimensions. Weights may be any strided view (a
GPT-2 ``Conv1D`` weight ``(in, out)`` arrives transposed, as ``(out, in)``); the gradients of a view flow back to
its base through autograd. The backward only calls registered ops,
so AOTAutograd traces it under ``torch.compile``.

``define`` also returns the ops' plain implementations (``linear_eager``, ``feed_forward_eager``: the same Python
bodies, not wrapped). In eager inference, where no input needs a gradient, the public functions call those and skip
torch.library's custom-op dispatch, which costs ~150 us of Python per call (measured on a (8, 64) x (64, 64) linear:
kernels.linear 200 us against F.linear's 8 us).
"""

from typing import Callable, NamedTuple, Optional

import torch

from ..reference import GATED_ACTIVATIONS


def _widths(weight: torch.Tensor, weight_up: Optional[torch.Tensor], activation: Optional[str]) -> tuple[int, int]:
    """(output width, pre-activation width) of a first projection: packed gated (2N rows) -> (N, 2N), a separate
    up projection -> (N, 2N), otherwise (N, N)."""
    rows = weight.shape[0]
    if weight_up is not None:
        return rows, 2 * rows
    return (rows // 2 if activation in GATED_ACTIVATIONS else rows), rows


def _column_sums(grad: torch.Tensor) -> torch.Tensor:
    """The bias gradient of a Linear without activation, accumulated in fp32 (fp64 for fp64)."""
    return grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))


class CompositeOps(NamedTuple):
    linear: Callable  # the registered ops (autograd, fakes)
    feed_forward: Callable
    linear_eager: Callable  # their implementations, for eager calls that need no gradient
    feed_forward_eager: Callable


def define(backend: str, forward: Callable, act_backward: Callable, matmul: Callable,
           weight_grad: Optional[Callable] = None, matmul_add: Optional[Callable] = None) -> CompositeOps:
    """Registers ``kernels::{backend}_linear`` and ``kernels::{backend}_feed_forward``; returns them with their
    implementations. ``matmul_add(c, a, b) = c + a @ b`` (default: ``matmul`` and an add) sums the input gradients
    of separate gate and up projections."""
    if weight_grad is None:
        def weight_grad(grad, x, bias):
            return matmul(grad.t(), x), (_column_sums(grad) if bias else None)
    if matmul_add is None:
        def matmul_add(c, a, b):
            return c + matmul(a, b)

    def first_projection_grads(grad_pre, x, weight, weight_up):
        """(grad_x, grad_weight, grad_weight_up) of ``pre = x @ [weight; weight_up].T`` from ``grad_pre`` (M, width);
        with a separate up projection each half of grad_pre meets its own weight (no concatenated copy)."""
        if weight_up is None:
            return matmul(grad_pre, weight), matmul(grad_pre.t(), x), None  # (M, K), (width, K)
        n = weight.shape[0]
        grad_gate, grad_up = grad_pre[:, :n], grad_pre[:, n:]  # (M, N) views each
        grad_x = matmul_add(matmul(grad_gate, weight), grad_up, weight_up)
        return grad_x, matmul(grad_gate.t(), x), matmul(grad_up.t(), x)

    def split_bias_grad(grad_bias, dtypes, n):
        """The bias gradients (fp32 sums, (width,)) cast to the biases' dtypes; split at n for a separate up bias."""
        bias_dtype, bias_up_dtype = dtypes
        if bias_dtype is None:
            return None, None
        if bias_up_dtype is None:
            return grad_bias.to(bias_dtype), None
        return grad_bias[:n].to(bias_dtype), grad_bias[n:].to(bias_up_dtype)

    def linear_eager(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
                     save_pre: bool, weight_up: Optional[torch.Tensor] = None,
                     bias_up: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        seed = torch.zeros(1, dtype=torch.int64, device=x.device)
        return forward(x, weight, bias, activation, 0.0, seed, None, save_pre and activation is not None, weight_up,
                       bias_up)

    linear = torch.library.custom_op(f"kernels::{backend}_linear", linear_eager, mutates_args=())

    @linear.register_fake
    def _(x, weight, bias, activation, save_pre, weight_up=None, bias_up=None):
        out_width, pre_width = _widths(weight, weight_up, activation)
        pre_rows = x.shape[0] if save_pre and activation is not None else 0
        return x.new_empty((x.shape[0], out_width)), x.new_empty((pre_rows, pre_width))

    def linear_setup(ctx, inputs, output):
        x, weight, bias, activation, _save_pre, weight_up, bias_up = inputs
        ctx.activation = activation
        ctx.bias_dtypes = (None if bias is None else bias.dtype, None if bias_up is None else bias_up.dtype)
        ctx.save_for_backward(x, weight, weight_up, output[1])
        # `pre` is internal (saved for the backward, never differentiated): no (M, width) zeros for its gradient.
        ctx.set_materialize_grads(False)

    def linear_backward(ctx, grad_out, _grad_pre):
        if grad_out is None:
            return (None,) * 7
        x, weight, weight_up, pre = ctx.saved_tensors
        has_bias = ctx.bias_dtypes[0] is not None
        grad_w_up = None
        if ctx.activation is None:  # the bias gradient comes with the weight gradient's GEMM
            grad_w, grad_bias = weight_grad(grad_out, x, has_bias)  # (N, K), (N,)
            grad_x = matmul(grad_out, weight)  # (M, K)
        else:
            seed = torch.zeros(1, dtype=torch.int64, device=x.device)
            grad_pre, grad_bias = act_backward(grad_out, None, pre, ctx.activation, 0.0, seed)
            grad_x, grad_w, grad_w_up = first_projection_grads(grad_pre, x, weight, weight_up)
        grad_b, grad_b_up = split_bias_grad(grad_bias, ctx.bias_dtypes, weight.shape[0])
        return grad_x, grad_w, grad_b, None, None, grad_w_up, grad_b_up

    linear.register_autograd(linear_backward, setup_context=linear_setup)

    def feed_forward_eager(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                           b2: Optional[torch.Tensor], activation: Optional[str], dropout_p: float, seed: torch.Tensor,
                           residual: Optional[torch.Tensor], save_pre: bool, w1_up: Optional[torch.Tensor] = None,
                           b1_up: Optional[torch.Tensor] = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # h = dropout(act(x @ w1.T + b1)): (M, ffn); pre = x @ w1.T + b1: (M, ffn or 2 ffn), kept for the backward.
        h, pre = forward(x, w1, b1, activation, dropout_p, seed, None, save_pre, w1_up, b1_up)
        out, _ = forward(h, w2, b2, None, 0.0, seed, residual, False, None, None)  # (M, d_out)
        return out, h, pre

    feed_forward = torch.library.custom_op(f"kernels::{backend}_feed_forward", feed_forward_eager, mutates_args=())

    @feed_forward.register_fake
    def _(x, w1, b1, w2, b2, activation, dropout_p, seed, residual, save_pre, w1_up=None, b1_up=None):
        rows = x.shape[0]
        out_width, pre_width = _widths(w1, w1_up, activation)
        return (x.new_empty((rows, w2.shape[0])), x.new_empty((rows, out_width)),
                x.new_empty((rows if save_pre else 0, pre_width)))

    def feed_forward_setup(ctx, inputs, output):
        x, w1, b1, w2, b2, activation, dropout_p, seed, residual, _save_pre, w1_up, b1_up = inputs
        ctx.activation, ctx.dropout_p = activation, dropout_p
        ctx.b1_dtypes = (None if b1 is None else b1.dtype, None if b1_up is None else b1_up.dtype)
        ctx.b2_dtype = None if b2 is None else b2.dtype
        ctx.has_residual = residual is not None
        _out, h, pre = output
        ctx.save_for_backward(x, w1, w1_up, w2, seed, h, pre)
        # h and pre are internal (saved for the backward): no (M, ffn) zeros for their gradients (measured: two 512 x
        # 512 fills per layer, ~4% of a small CPU training step).
        ctx.set_materialize_grads(False)

    def feed_forward_backward(ctx, grad_out, _grad_h, _grad_pre):
        if grad_out is None:
            return (None,) * 12
        x, w1, w1_up, w2, seed, h, pre = ctx.saved_tensors
        # Second Linear: grad_w2 = grad_out.T @ h (d_out, ffn), grad_b2 = column sums of grad_out.
        grad_w2, grad_b2 = weight_grad(grad_out, h, ctx.b2_dtype is not None)
        grad_b2 = None if ctx.b2_dtype is None else grad_b2.to(ctx.b2_dtype)
        # The activation and dropout derivatives in the epilogue of grad_out @ w2, with the bias gradient of b1.
        grad_pre, grad_bias1 = act_backward(grad_out, w2, pre, ctx.activation, ctx.dropout_p, seed)
        grad_x, grad_w1, grad_w1_up = first_projection_grads(grad_pre, x, w1, w1_up)
        grad_b1, grad_b1_up = split_bias_grad(grad_bias1, ctx.b1_dtypes, w1.shape[0])
        grad_residual = grad_out if ctx.has_residual else None
        return (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, grad_residual, None, grad_w1_up,
                grad_b1_up)

    feed_forward.register_autograd(feed_forward_backward, setup_context=feed_forward_setup)
    return CompositeOps(linear, feed_forward, linear_eager, feed_forward_eager)
