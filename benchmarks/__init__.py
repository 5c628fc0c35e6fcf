"""Benchmark suites: every kernel timed beside its peers in the same run, reported against the machine's measured
ceilings. ``python -m benchmarks --help``."""
