"""``kernels.masked_softmax``: ``softmax(scale * x + mask)`` over the last dimension in one pass."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._backend import Implementation

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_backend.register(Implementation("masked_softmax", "torch", reference.masked_softmax, {"cpu": _ALL, "cuda": _ALL}))


def masked_softmax(x, mask=None, *, scale=1.0, is_causal=False, backend="auto"):
    """Softmax of ``scale * x`` with ``mask`` (bool: True = keep; float: added) and optional causal masking."""
    implementation = _backend.select("masked_softmax", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, mask, scale, is_causal)
