"""Benchmark suites: every kernel timed beside its peers in the same run, reported against the machine's measured
ceilings. ``python -m benchmarks --help``. Whole-model profiles: ``profile_model`` (returns a ``Profile``) and
``python -m benchmarks profile --help``."""

__all__ = ["Profile", "profile_model"]


def __getattr__(name):
    # Imported on first use: `import benchmarks.timing` and the like stay free of kernels/transformer imports.
    if name in __all__:
        from . import profiling

        return getattr(profiling, name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
