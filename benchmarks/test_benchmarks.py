"""pytest-benchmark view of the suites: ``pytest benchmarks --benchmark-only`` times every quick case and provider
with pytest-benchmark's statistics (and its --benchmark-json / --benchmark-compare). ``python -m benchmarks`` is the
full harness: ceilings, ratios to peers, records and plots."""

from __future__ import annotations

import pytest
import torch

from benchmarks import ops  # noqa: F401  (registers every suite)
from benchmarks.suite import SUITES, SuiteConfig, Unavailable, iter_cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = SuiteConfig(device=DEVICE, dtype=torch.bfloat16 if DEVICE.type == "cuda" else torch.float32, quick=True)


def _params():
    for case in iter_cases(sorted(SUITES), CONFIG):
        for provider, setup in case.providers.items():
            yield pytest.param(case, setup, id=f"{case.op}-{case.mode}-{case.shape_text()}-{provider}".replace(" ", "_"))


@pytest.mark.parametrize("case, setup", list(_params()))
def test_benchmark(benchmark, case, setup):
    try:
        closure = setup()
    except Unavailable as reason:
        pytest.skip(str(reason))
    if DEVICE.type == "cuda":
        def timed():
            closure()
            torch.cuda.synchronize()
    else:
        timed = closure
    benchmark.extra_info.update({"flops": case.flops, "bytes": case.bytes, "dtype": str(case.dtype)})
    benchmark.pedantic(timed, warmup_rounds=2, rounds=10, iterations=1)
