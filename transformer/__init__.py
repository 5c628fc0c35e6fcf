"""nn.Modules built on the kernels package."""

from .feed_forward import FeedForward

__all__ = ["FeedForward"]
