"""Benchmark suites: every kernel timed beside its peers in the same run, reported against the machine's measured
ceilings. ``python -m benchmarks --help``. Whole-model profiles: ``profile_model`` / ``python -m benchmarks profile``."""

from .profiling import Profile, profile_model

__all__ = ["Profile", "profile_model"]
