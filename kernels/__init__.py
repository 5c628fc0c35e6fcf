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
from .attention import attention_with_kv_cache, scaled_dot_product_attention, varlen_attention
from .feed_forward import feed_forward, linear
from .layer_norm import layer_norm, rms_norm
from .masked_softmax import masked_softmax
from .residual_add import residual_add

__all__ = [
    "BACKENDS",
    "BackendError",
    "attention_with_kv_cache",
    "backend_table",
    "extension_status",
    "feed_forward",
    "get_default_backend",
    "layer_norm",
    "linear",
    "masked_softmax",
    "residual_add",
    "rms_norm",
    "scaled_dot_product_attention",
    "set_default_backend",
    "use_backend",
    "varlen_attention",
]
