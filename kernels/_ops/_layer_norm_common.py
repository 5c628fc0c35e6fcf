"""What the Triton and the native layer-norm ops share: fake implementations and autograd.

Both backends expose the same pair of ops on ``(M, N)`` rows, for layer norm and RMS norm (``rms``):

* ``forward(x, residual?, weight?, bias?, eps, rms) -> (y, h, mean, rstd)``: ``h = x + residual`` (empty without a
  residual); ``mean`` ``(M,)`` (empty for RMS norm) and ``rstd`` ``(M,)`` in fp32 (fp64 for fp64 inputs);
* ``backward(dy, dh?, h, mean, rstd, weight?, has_bias, rms) -> (dx, dweight, dbias)``: ``h`` is the normalised input
  (``x`` or ``x + residual``), ``dh`` the gradient reaching the returned ``h``; ``dx`` is also the residual's gradient;
  ``dweight`` / ``dbias`` are empty when there is no weight / bias.
"""

from __future__ import annotations

import torch


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def fake_forward(x, residual, weight, bias, eps, rms):
    m, n = x.shape
    stats = stats_dtype(x.dtype)
    return (x.new_empty((m, n)), x.new_empty((m, n) if residual is not None else (0,)),
            x.new_empty((0 if rms else m,), dtype=stats), x.new_empty((m,), dtype=stats))


def fake_backward(dy, dh, h, mean, rstd, weight, has_bias, rms):
    n = h.shape[1]
    param_dtype = weight.dtype if weight is not None else h.dtype
    return (h.new_empty(h.shape), h.new_empty((n if weight is not None else 0,), dtype=param_dtype),
            h.new_empty((n if has_bias else 0,), dtype=param_dtype))


def register_autograd(forward_op, backward_op) -> None:
    """Autograd of ``forward_op`` through ``backward_op`` (either a custom-op object or a qualified op name)."""

    def setup_context(ctx, inputs, output):
        x, residual, weight, bias, _eps, rms = inputs
        _y, h, mean, rstd = output
        ctx.has_residual, ctx.has_bias, ctx.rms = residual is not None, bias is not None, rms
        ctx.save_for_backward(h if residual is not None else x, mean, rstd, weight)
        # Outputs that receive no gradient arrive as None instead of zero-filled tensors: a post-norm layer that
        # drops h then costs no (M, N) zeros to allocate and read.
        ctx.set_materialize_grads(False)

    def backward(ctx, dy, dh, _dmean, _drstd):
        normalised, mean, rstd, weight = ctx.saved_tensors
        dh = dh if ctx.has_residual else None
        if dy is None:  # only h was used: its gradient passes to x and residual; none reaches weight and bias
            return dh, dh, None, None, None, None
        dx, dweight, dbias = backward_op(dy, dh, normalised, mean, rstd, weight, ctx.has_bias, ctx.rms)
        return (dx, dx if ctx.has_residual else None, dweight if weight is not None else None,
                dbias if ctx.has_bias else None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
