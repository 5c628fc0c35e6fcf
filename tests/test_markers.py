"""The `gpu` marker (tests/conftest.py): every case parametrised over a CUDA device carries it, so that `-m gpu`
selects the whole GPU tier and `-m "not gpu"` none of it (benchmarks/gpu_check.sh builds its stages from these
selections)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFTEST = os.path.join(ROOT, "tests", "conftest.py")


@pytest.fixture
def conftest(pytestconfig):
    """tests/conftest.py as pytest loaded it (`import conftest` may find tests/benchmarks/conftest.py instead)."""
    return next(plugin for plugin in pytestconfig.pluginmanager.get_plugins()
                if getattr(plugin, "__file__", None) == CONFTEST)
# A parameter id naming a CUDA device: "cuda" / "cuda:1" as one dash-separated part of the id.
CUDA_ID = re.compile(r"(^|-)cuda(:\d+)?(-|$)")


class _Item:
    """What the hook reads of a collected item: callspec.params, keywords, add_marker."""

    def __init__(self, params=None, marks=()):
        self.callspec = types.SimpleNamespace(params=params) if params is not None else None
        self.keywords = {mark: True for mark in marks}

    def add_marker(self, mark):
        self.keywords[mark.name] = True


def test_is_cuda_device(conftest):
    # A loop, not a parametrisation: parameters naming CUDA would put this test in the GPU tier.
    cases = [("cuda", True), ("cuda:1", True), (torch.device("cuda", 0), True), (("cuda", "triton"), True),
             (["cpu", torch.device("cuda")], True), ("cpu", False), (torch.device("cpu"), False),
             (("cpu", "cuda_graph"), False), ("cudagraph", False), (3, False), (None, False)]
    assert [conftest.is_cuda_device(value) for value, _ in cases] == [cuda for _, cuda in cases]


def test_hook_marks_every_cuda_parametrised_case(conftest):
    cases = {
        "device": _Item({"device": "cuda"}),
        "pair": _Item({"case": ("cuda", "native"), "dtype": torch.float16}),
        "second gpu": _Item({"device": torch.device("cuda", 1)}),
        "cpu": _Item({"device": "cpu"}),
        "plain": _Item(),
        "already": _Item({"device": "cuda"}, marks=("gpu",)),
    }
    conftest.pytest_collection_modifyitems(None, list(cases.values()))
    marked = {name for name, item in cases.items() if "gpu" in item.keywords}
    assert marked == {"device", "pair", "second gpu", "already"}


def offenders(node_ids: list[str]) -> list[str]:
    """The ids (of a `-m "not gpu"` collection) whose parameters name a CUDA device."""
    found = []
    for node_id in node_ids:
        params = re.search(r"\[(.*)\]$", node_id)
        if params and CUDA_ID.search(params.group(1)):
            found.append(node_id)
    return found


def test_offenders_are_found_by_their_ids():
    ids = ["tests/test_a.py::test_x[cuda-triton]", "tests/test_a.py::test_x[cpu-triton]",
           "tests/test_b.py::test_y[fp16-cuda:1]", "tests/test_b.py::test_z", "tests/test_c.py::test_w[cudagraph]"]
    assert offenders(ids) == ids[:1] + ids[2:3]


@pytest.mark.slow
def test_no_cuda_case_outside_the_gpu_tier():
    """Collects the suite as `-m "not gpu"` does and lists every case there parametrised over a CUDA device (on a
    machine without one there are none to find; on the GPU machine this is the check that counts)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not gpu",
                           "-p", "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids, done.stdout[-2000:]
    assert offenders(ids) == [], "cases parametrised over CUDA without the gpu marker:\n" + "\n".join(offenders(ids))
