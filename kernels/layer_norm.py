"""``kernels.layer_norm`` and ``kernels.rms_norm``, with the fused residual add ("Add & Norm").

Without ``residual`` they match ``F.layer_norm`` / ``F.rms_norm``. With it they compute ``h = x + residual`` and
return ``(norm(h), h)``: post-norm layers use the first, pre-norm layers keep the second as the next residual.
Gradients flow to ``x``, ``residual``, ``weight`` and ``bias``.

The fast backends normalise ``(M, N)`` rows (N = the product of ``normalized_shape``); the reshaping happens here, so
any number of leading dimensions and non-contiguous inputs work. Statistics are fp32 (fp64 for fp64 inputs). Their
backward is deterministic: partial ``dweight`` / ``dbias`` sums per block of rows, then a second, ordered reduction.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _backend, reference
from ._backend import Implementation
from ._ops import _fast, _scalars

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA = (torch.float16, torch.bfloat16, torch.float32)


def _flattened(forward, rms: bool):
    """A backend function with the reference's signature, around ``forward`` on ``(M, N)`` rows."""

    def run(x, normalized_shape, weight, bias, eps, residual):
        normalized_shape = reference._shape(normalized_shape)
        if x.dim() == 2 and len(normalized_shape) == 1:  # already (M, N) rows: no reshapes (a view costs ~1 us)
            y, h, _mean, _rstd = forward(x, residual, weight, bias, eps, rms)
            return y if residual is None else (y, h)
        n = math.prod(normalized_shape)
        if len(normalized_shape) > 1:
            weight = None if weight is None else weight.reshape(n)
            bias = None if bias is None else bias.reshape(n)
        # (..., N) -> (M, N) and back; reshape(-1, n) and view_as are the cheapest view calls (0.8 us each against
        # 1.1 for reshape of a computed shape and 1.9 for view(x.shape), 1 thread).
        rows = -1 if n else math.prod(x.shape[:x.dim() - len(normalized_shape)])  # -1 is ambiguous when N = 0
        y, h, _mean, _rstd = forward(x.reshape(rows, n), None if residual is None else residual.reshape(rows, n),
                                     weight, bias, eps, rms)
        y = y.view_as(x)
        return y if residual is None else (y, h.view_as(x))

    if rms:
        return lambda x, normalized_shape, weight=None, eps=None, *, residual=None: run(
            x, normalized_shape, weight, None, eps, residual)
    return lambda x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None: run(
        x, normalized_shape, weight, bias, eps, residual)


def _register() -> None:
    from ._ops import layer_norm_native

    for op, rms, reference_fn in (("layer_norm", False, reference.layer_norm), ("rms_norm", True, reference.rms_norm)):
        _backend.register(Implementation(op, "torch", reference_fn, {"cpu": _ALL, "cuda": _ALL}))
        _backend.register(Implementation(
            op, "native", _flattened(layer_norm_native.forward, rms),
            {"cpu": (torch.float32, torch.float64, torch.bfloat16), "cuda": _CUDA}, native_op="layer_norm_forward",
        ))
        if _backend._triton_importable():
            from ._ops import layer_norm_triton

            _backend.register(Implementation(
                op, "triton", _flattened(layer_norm_triton.forward, rms),
                {"cpu": (torch.float32, torch.float16), "cuda": _CUDA}, notes="cpu only under TRITON_INTERPRET=1",
            ))


_register()


def _check_tensor(value, name: str, x: torch.Tensor, shape: tuple) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"argument `{name}` must be a tensor or None, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"argument `{name}` has shape {tuple(value.shape)}; expected {shape}")
    if value.dtype != x.dtype:
        raise ValueError(f"argument `{name}` has dtype {value.dtype}; expected {x.dtype} (the dtype of `x`)")
    if value.device != x.device:
        raise ValueError(f"argument `{name}` is on {value.device}; expected {x.device} (the device of `x`)")


def _normalized_shape(normalized_shape) -> tuple:
    if type(normalized_shape) is int:  # the common cases first, without the numbers ABC checks
        return (normalized_shape,)
    if type(normalized_shape) is tuple and len(normalized_shape) == 1 and type(normalized_shape[0]) is int:
        return normalized_shape  # (N,): no generator (~0.4 us)
    if type(normalized_shape) in (tuple, torch.Size) and all(type(s) is int for s in normalized_shape):
        return tuple(normalized_shape)
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    if isinstance(normalized_shape, (tuple, list, torch.Size)) and all(
            isinstance(s, numbers.Integral) for s in normalized_shape):
        return tuple(int(s) for s in normalized_shape)
    raise TypeError(f"argument `normalized_shape` must be an int or a sequence of ints, got {normalized_shape!r}")


def _validate(x, normalized_shape, weight, bias, residual) -> tuple:
    """Checks the tensor arguments (the same errors for every backend); returns ``normalized_shape`` as a tuple."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"argument `x` must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"argument `x` has dtype {x.dtype}; expected a floating dtype")
    shape = _normalized_shape(normalized_shape)
    if len(shape) == 0 or len(shape) > x.dim() or x.shape[x.dim() - len(shape):] != shape:
        raise ValueError(f"argument `normalized_shape` is {shape}; expected the trailing dimensions of `x`, whose "
                         f"shape is {tuple(x.shape)}")
    _check_tensor(weight, "weight", x, shape)
    _check_tensor(bias, "bias", x, shape)
    _check_tensor(residual, "residual", x, x.shape)
    return shape


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None, backend="auto"):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions (optionally after ``x + residual``).

    Returns ``F.layer_norm(x, ...)``, or ``(F.layer_norm(x + residual, ...), x + residual)`` with ``residual``.
    """
    if _fast.usable(backend):  # the common call, checked and run in C++ (None: any other call)
        out = _fast.layer_norm(x, normalized_shape, weight, bias, eps, residual)
        if out is not None:
            return out
    shape = _validate(x, normalized_shape, weight, bias, residual)
    eps = _scalars.eps(eps)
    implementation = _backend.select("layer_norm", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, shape, weight, bias, eps, residual=residual)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, residual=None, backend="auto"):
    """RMS normalisation over the trailing ``normalized_shape`` dimensions (optionally after ``x + residual``).

    ``eps=None`` means ``torch.finfo(x.dtype).eps``, as in ``F.rms_norm``. Returns ``F.rms_norm(x, ...)``, or
    ``(F.rms_norm(x + residual, ...), x + residual)`` with ``residual``.
    """
    if _fast.usable(backend):
        out = _fast.rms_norm(x, normalized_shape, weight, eps, residual)
        if out is not None:
            return out
    shape = _validate(x, normalized_shape, weight, None, residual)
    eps = torch.finfo(x.dtype).eps if eps is None else _scalars.eps(eps)
    implementation = _backend.select("rms_norm", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, shape, weight, eps, residual=residual)
