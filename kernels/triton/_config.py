"""What every Triton launcher needs to know about where and how it runs."""

from __future__ import annotations

import contextlib
import os

import torch


def interpreting() -> bool:
    """True under the Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors, one program at a time, and
    launchers must use a fixed configuration (no autotuning) and small blocks."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def one_config() -> bool:
    """True with KERNELS_TRITON_ONE_CONFIG=1: autotuned launchers use one known-good configuration instead of
    benchmarking their candidates (one compilation per specialisation; the GPU check's first stage sets it). Read at
    each launch, so it can be switched within a process."""
    return os.environ.get("KERNELS_TRITON_ONE_CONFIG") == "1"


def on_device(tensor: torch.Tensor):
    """The context every launch runs in: ``tensor``'s CUDA device made current, since Triton launches on the current
    device (tensors on ``cuda:1`` while ``cuda:0`` is current would otherwise be read by a kernel on GPU 0). A no-op
    for CPU tensors (the interpreter)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
