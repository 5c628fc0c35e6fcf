"""``kernels.linear`` (a GEMM with a fused bias and activation) and ``kernels.feed_forward`` (the whole block)."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._backend import Implementation

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_backend.register(Implementation("linear", "torch", reference.linear, {"cpu": _ALL, "cuda": _ALL}))
_backend.register(Implementation("feed_forward", "torch", reference.feed_forward, {"cpu": _ALL, "cuda": _ALL}))


def linear(x, weight, bias=None, *, activation=None, backend="auto"):
    """``activation(x @ weight.T + bias)`` with ``weight`` in ``nn.Linear`` layout ``(out, in)``."""
    implementation = _backend.select("linear", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, weight, bias, activation=activation)


def feed_forward(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None, backend="auto"):
    """``residual + Linear2(dropout(activation(Linear1(x))))``; gated activations take ``w1`` as ``[gate; up]``."""
    implementation = _backend.select("feed_forward", backend, device=x.device, dtype=x.dtype)
    return implementation.fn(x, w1, b1, w2, b2, activation=activation, dropout_p=dropout_p, residual=residual)
