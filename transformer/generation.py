"""Token choice for generation (greedy, or sampling with temperature and top-k) and model-wide backend setting."""

from __future__ import annotations

import torch
from torch import nn


def next_token(logits, *, do_sample=False, temperature=1.0, top_k=None, generator=None):
    """The next token of each row of ``logits`` ``(B, V)``, as ``(B, 1)``: the argmax, or a sample of
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    if temperature <= 0:
        raise ValueError(f"argument `temperature` must be > 0 when sampling; got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"argument `top_k` must be >= 1; got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets the kernel backend of every fused module in ``model`` (those with a ``backend`` attribute)."""
    for module in model.modules():
        if isinstance(getattr(module, "backend", None), str):
            module.backend = backend
    return model
