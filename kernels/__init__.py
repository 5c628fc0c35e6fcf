"""Fused Triton and C++/CUDA kernels for transformer blocks: masked softmax attention, layer norm (Add & Norm) and the
feed-forward block. Every op takes ``backend="auto"|"torch"|"triton"|"native"``; see ``python -m kernels``."""

from ._backend import (
    BACKENDS,
    BackendError,
    backend_table,
    get_default_backend,
    set_default_backend,
    use_backend,
)
from ._extension import extension_status
from .residual_add import residual_add

__all__ = [
    "BACKENDS",
    "BackendError",
    "backend_table",
    "extension_status",
    "get_default_backend",
    "residual_add",
    "set_default_backend",
    "use_backend",
]
