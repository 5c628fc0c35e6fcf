"""Test-suite set-up: the Triton interpreter when there is no GPU, output poisoning, markers and per-test seeds.

Both environment variables must be set before `triton` and `kernels` are imported, hence at the top of this file.
"""

import hashlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels then run on CPU tensors
os.environ.setdefault("KERNELS_POISON_OUTPUTS", "1")  # outputs start as NaN, so unwritten elements fail

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import kernels  # noqa: E402,F401  (registers every op before collection)

# Property tests (tests/properties/): "ci" (the default) is derandomized (the same examples every run, so CI is
# reproducible) and bounded (the tier takes ~2-3 minutes); "fuzz" draws fresh examples, many more, and keeps
# failures in the local example database. Choose with HYPOTHESIS_PROFILE=fuzz. A failure prints the falsifying
# example and an @reproduce_failure blob.
_PROPERTY_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=24, derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_PROPERTY_HEALTH)
settings.register_profile("fuzz", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=_PROPERTY_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="gpu tier: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test, different for every test id: reproducible, yet fresh inputs for every case."""
    seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:4], "little")
    torch.manual_seed(seed)
    yield
