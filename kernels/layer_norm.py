"""``kernels.layer_norm`` and ``kernels.rms_norm``, with the fused residual add ("Add & Norm").

Without ``residual`` they match ``F.layer_norm`` / ``F.rms_norm``. With it they compute ``h = x + residual`` and
return ``(norm(h), h)``.
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._backend import Implementation

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_backend.register(Implementation("layer_norm", "torch", reference.layer_norm, {"cpu": _ALL, "cuda": _ALL}))
_backend.register(Implementation("rms_norm", "torch", reference.rms_norm, {"cpu": _ALL, "cuda": _ALL}))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None, backend="auto"):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions (optionally after ``x + residual``)."""
    implementation = _backend.select("layer_norm", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, normalized_shape, weight, bias, eps, residual=residual)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, residual=None, backend="auto"):
    """RMS normalisation over the trailing ``normalized_shape`` dimensions (optionally after ``x + residual``)."""
    implementation = _backend.select("rms_norm", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, normalized_shape, weight, eps, residual=residual)
