"""Test-suite set-up: the Triton interpreter when there is no GPU, output poisoning, the `gpu` marker on every case
parametrised over a CUDA device, and per-test seeds.

Both environment variables must be set before `triton` and `kernels` are imported, hence at the top of this file.
"""

import glob
import hashlib
import os
import re

import torch

# `pytest --collect-only` as on the GPU machine, from a machine without one (benchmarks/gpu_plan.py counts the GPU
# check's cases so): torch reports one CUDA device, and the native backend the CUDA kernels csrc/cuda/*.cu registers.
# Collection only (pytest_configure refuses anything else): no test can run so.
COLLECT_AS_GPU = os.environ.get("KERNELS_COLLECT_AS_GPU") == "1" and not torch.cuda.is_available()
if COLLECT_AS_GPU:
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels then run on CPU tensors
os.environ.setdefault("KERNELS_POISON_OUTPUTS", "1")  # outputs start as NaN, so unwritten elements fail

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import kernels  # noqa: E402,F401  (registers every op before collection)
from kernels import _backend  # noqa: E402

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


def _cuda_ops_in_sources() -> set[str]:
    """The ops csrc/cuda/*.cu registers for CUDA (`m.impl("name", ...)`)."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda")
    ops = set()
    for path in glob.glob(os.path.join(root, "*.cu")):
        with open(path) as source:
            ops.update(re.findall(r'm\.impl\("(\w+)"', source.read()))
    return ops


if COLLECT_AS_GPU:
    _cuda_ops = _cuda_ops_in_sources()
    _has_native_kernel = _backend.has_native_kernel
    _backend.has_native_kernel = lambda op, device_type: (op in _cuda_ops if device_type == "cuda"
                                                          else _has_native_kernel(op, device_type))


def pytest_configure(config):
    if COLLECT_AS_GPU and not config.option.collectonly:
        raise pytest.UsageError("KERNELS_COLLECT_AS_GPU=1 simulates a GPU for `pytest --collect-only` only")


def is_cuda_device(value) -> bool:
    """Whether a test parameter names a CUDA device: "cuda", "cuda:1", torch.device("cuda"), or a tuple/list holding
    one (e.g. the (device, backend) pairs)."""
    if isinstance(value, torch.device):
        return value.type == "cuda"
    if isinstance(value, str):
        return value == "cuda" or value.startswith("cuda:")
    if isinstance(value, (tuple, list)):
        return any(is_cuda_device(v) for v in value)
    return False


def cuda_parametrised(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(is_cuda_device(value) for value in callspec.params.values())


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m gpu` / `-m "not gpu"` then split the suite exactly
def pytest_collection_modifyitems(config, items):
    """Every case parametrised over a CUDA device carries the `gpu` marker (the GPU tier; tests/test_markers.py
    checks it), and the GPU tier is skipped without a CUDA device."""
    skip_gpu = pytest.mark.skip(reason="gpu tier: no CUDA device on this machine")
    for item in items:
        if cuda_parametrised(item) and "gpu" not in item.keywords:
            item.add_marker(pytest.mark.gpu)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test, different for every test id: reproducible, yet fresh inputs for every case."""
    seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:4], "little")
    torch.manual_seed(seed)
    yield
