"""Profiling a whole model's step: ``profile_model`` (the API), ``Profile`` (its result) and
``python -m benchmarks profile`` (the CLI, cli.py)."""

from .api import profile_model
from .profile import Profile, VariantProfile

__all__ = ["Profile", "VariantProfile", "profile_model"]
