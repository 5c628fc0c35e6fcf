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

from . import _double_backward


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


def first_derivative(dy, dh, h, mean, rstd, weight, has_bias, rms):
    """The backward's outputs ``(dx, dweight, dbias)`` recomputed with differentiable torch ops (the backward op's
    second derivative differentiates this). The statistics are recomputed from ``h`` so that their derivatives are
    exact, and take their values from the saved ``rstd``: ``rstd**-2 = var + eps`` gives back the forward's ``eps``
    as a constant. ``xhat = (h - mean) * rstd`` (``h * rstd`` for RMS norm), ``g = dy * weight``;
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (RMS norm: without ``mean(g)``) plus ``dh``,
    ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` over the rows."""
    stats = rstd.dtype
    hs, dys = h.to(stats), dy.to(stats)
    centred = hs if rms else hs - hs.mean(-1, keepdim=True)  # (M, N)
    var = centred.square().mean(-1, keepdim=True)  # (M, 1): the mean square for RMS norm
    eps = (rstd.to(stats)[:, None].pow(-2) - var).detach()
    rstd_h = torch.rsqrt(var + eps)
    xhat = centred * rstd_h
    g = dys if weight is None else dys * weight.to(stats)
    gx = (g * xhat).mean(-1, keepdim=True)
    dx = rstd_h * (g - xhat * gx if rms else g - g.mean(-1, keepdim=True) - xhat * gx)
    if dh is not None:
        dx = dx + dh.to(stats)
    dweight = None if weight is None else (dys * xhat).sum(0).to(weight.dtype)
    dbias = None if not has_bias else dys.sum(0).to(weight.dtype if weight is not None else h.dtype)
    return dx.to(h.dtype), dweight, dbias


def register_autograd(forward_op, backward_op) -> None:
    """Autograd of ``forward_op`` through ``backward_op`` (either a custom-op object or a qualified op name), and the
    second derivative of ``backward_op``. (The native ops' forward autograd is C++: csrc/autograd/layer_norm.cpp.)"""
    register_double_backward(backward_op)

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
        dx, dweight, dbias = _double_backward.call_backward(backward_op, dy, dh, normalised, mean, rstd, weight,
                                                            ctx.has_bias, ctx.rms)
        return (dx, dx if ctx.has_residual else None, dweight if weight is not None else None,
                dbias if ctx.has_bias else None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_double_backward(backward_op) -> None:
    """The second derivative of a layer-norm backward op, through :func:`first_derivative`."""
    _double_backward.register(backward_op, first_derivative, "kernels.layer_norm / kernels.rms_norm")
