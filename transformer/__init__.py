"""nn.Modules built on the kernels package."""

from .feed_forward import FeedForward
from .layer_norm import LayerNorm, RMSNorm

__all__ = ["FeedForward", "LayerNorm", "RMSNorm"]
