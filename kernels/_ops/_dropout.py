"""The Philox seed that every dropout op of the package draws once per forward (and saves for its backward)."""

from __future__ import annotations

import torch


def draw_seed(dropout_p: float, device: torch.device) -> torch.Tensor | None:
    """A one-element int64 tensor on ``device``, drawn from torch's generator of that device, or None without dropout.

    ``torch.manual_seed`` reproduces it; the kernels read it from memory, so nothing syncs with the host and a captured
    CUDA graph draws a new seed on every replay (torch's CUDA generator is graph-safe).
    """
    return torch.randint(2**31, (1,), dtype=torch.int64, device=device) if dropout_p > 0.0 else None
