"""Output allocation for the Python-launched kernels (Triton).

With ``KERNELS_POISON_OUTPUTS=1`` in the environment (the test suite sets it; the C++ kernels read the same variable),
floating outputs are filled with NaN before a kernel writes them, so an element the kernel forgets fails every check.
"""

from __future__ import annotations

import os

import torch

_POISON = os.environ.get("KERNELS_POISON_OUTPUTS") == "1"


def poison_enabled() -> bool:
    return _POISON


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty_like(like: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return empty(like.shape, dtype=dtype or like.dtype, device=like.device)
