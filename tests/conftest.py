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

import kernels  # noqa: E402,F401  (registers every op before collection)

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
