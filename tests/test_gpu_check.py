"""The GPU check's machinery, on the CPU: the plan (benchmarks/gpu_plan.py), the runner's output folder
(benchmarks/gpu_run.py), the prebuilt extension's tags (benchmarks/gpu_prebuilt.py), the benchmark's cold starts and
case filter, and gpu_check.sh's refusal without a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
import torch

from benchmarks import gpu_plan, gpu_prebuilt, gpu_run
from benchmarks.ceilings import Ceilings
from benchmarks.runner import run_cases
from benchmarks.suite import Case, SuiteConfig, iter_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_cases_are_the_planned_ones():
    """The --match patterns select exactly the cases the plan counts, from the GPU sweep (built on the meta device)."""
    from benchmarks import ops  # noqa: F401  (registers the suites)

    config = SuiteConfig(device=torch.device("meta"), dtype=torch.bfloat16, quick=False, modes=("fwd", "fwd+bwd"))
    texts = [f"{c.op} {c.mode} {c.shape_text()}" for c in iter_cases(["attention", "layer_norm", "feed_forward"],
                                                                     config)]
    chosen = [t for t in texts if any(re.fullmatch(p, t) for p in gpu_plan.BENCH_MATCH)]
    assert len(chosen) == gpu_plan.BENCH_CASES, chosen
    assert {t.split()[0] for t in chosen} == {"attention", "layer_norm", "feed_forward"}
    assert "attention fwd+bwd B=4 S=4096 H=16 D=128 key padding mask" in chosen


def test_bench_command_has_no_compile_peers_unless_full():
    assert "torch.compile" not in gpu_plan.bench_command("out", full=False)
    assert "torch.compile" in gpu_plan.bench_command("out", full=True)


def test_every_stage_sets_what_it_promises():
    steps = {step.name: step for stage in gpu_plan.STAGES.values() for step in stage}
    assert steps["triton-one-config"].env == {"KERNELS_TRITON_ONE_CONFIG": "1"}
    assert "KERNELS_TRITON_ONE_CONFIG" not in steps["triton-autotuned"].env
    assert [s.name for s in gpu_plan.steps(2, full=False)] == ["triton-autotuned", "memcheck", "racecheck",
                                                                "benchmark"]
    assert gpu_plan.steps(2, full=True)[-1].name == "torch-compile"


def test_cold_start_is_recorded_beside_the_steady_state():
    calls = []

    def setup():
        calls.append("setup")
        return lambda: calls.append("call")

    case = Case(op="toy", mode="fwd", shape={"n": 1}, dtype=torch.float32, device=torch.device("cpu"),
                providers={"eager": setup}, bytes=8.0)
    (result,) = run_cases([case], Ceilings(1.0, 1.0, "fp32", 1, 1), providers=None, budget_s=0.001, progress=None)
    assert result.status == "ok" and result.cold_start_ms is not None and result.cold_start_ms > 0
    assert calls[:2] == ["setup", "call"]  # the cold start: the set-up and the first call


def _junit(path, cases):
    body = "".join(f'<testcase classname="tests.test_x" name="{name}">{extra}</testcase>' for name, extra in cases)
    failures = sum("failure" in extra for _, extra in cases)
    skipped = sum("skipped" in extra for _, extra in cases)
    with open(path, "w") as out:
        out.write(f'<testsuites><testsuite tests="{len(cases)}" failures="{failures}" errors="0" '
                  f'skipped="{skipped}">{body}</testsuite></testsuites>')


def test_junit_parts_merge_into_one_file(tmp_path):
    merged = str(tmp_path / "stage1-junit.xml")
    _junit(tmp_path / "a.xml", [("test_a[cuda]", ""), ("test_b", "<failure/>")])
    _junit(tmp_path / "b.xml", [("test_c", "<skipped/>")])
    assert gpu_run._merge_junit(str(tmp_path / "a.xml"), merged) == (1, 1, 0, ["tests/test_x.py::test_a[cuda]",
                                                                            "tests/test_x.py::test_b"])
    assert gpu_run._merge_junit(str(tmp_path / "b.xml"), merged)[:3] == (0, 0, 1)
    assert sorted(os.listdir(tmp_path)) == ["stage1-junit.xml"]
    assert open(merged).read().count("<testcase") == 3


def test_output_folder_keeps_at_most_eight_files(tmp_path):
    for name in ("setup.log", "stage1.log", "stage2.log", "stage1-junit.xml", "stage2-junit.xml", "bench-record.json",
                 "bench-table.md", "summary.md", ".stage2-memcheck.xml"):
        (tmp_path / name).write_text(name)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.csv").write_text("csv")
    gpu_run.limit_files(str(tmp_path))
    files = sorted(os.path.relpath(os.path.join(d, n), tmp_path) for d, _, ns in os.walk(tmp_path) for n in ns)
    assert len(files) == gpu_run.MAX_FILES and "extra.tar.gz" in files and "summary.md" in files
    with tarfile.open(tmp_path / "extra.tar.gz") as tar:
        assert sorted(tar.getnames()) == [".stage2-memcheck.xml", "bench-table.md", "bench/results.csv"]


def test_summary_keeps_the_other_stage(tmp_path):
    gpu_run.write_summary(str(tmp_path), 1, [gpu_run.Row(1, "native", "passed", 5, 0, 1, 12.0, 30.0)])
    gpu_run.write_summary(str(tmp_path), 2, [gpu_run.Row(2, "benchmark", "stopped at 100 s", seconds=100.0)])
    gpu_run.write_summary(str(tmp_path), 2, [gpu_run.Row(2, "benchmark", "passed", seconds=90.0)])
    text = (tmp_path / "summary.md").read_text()
    assert "| 1 | native | passed | 5 | 0 | 1 | 12 | 30 |" in text and "| 2 | benchmark | passed |" in text
    assert "stopped" not in text


def test_prebuilt_tags_must_all_match(tmp_path):
    machine = {"python_tag": ".cpython-312-x86_64-linux-gnu.so", "torch": "2.11.0+cu130", "cuda": "13.0",
               "cxx11_abi": True, "arch": "9.0", "sources": "abc"}
    assert gpu_prebuilt.mismatches(dict(machine), machine) == []
    assert gpu_prebuilt.mismatches({**machine, "torch": "2.10.0+cu128", "arch": "8.0"}, machine) == [
        "torch: prebuilt '2.10.0+cu128', here '2.11.0+cu130'", "arch: prebuilt '8.0', here '9.0'"]
    assert gpu_prebuilt.check(str(tmp_path)) == 1  # no manifest
    (tmp_path / "manifest.json").write_text(json.dumps({**machine, "sources": gpu_prebuilt.source_hash()}))
    assert gpu_prebuilt.check(str(tmp_path)) == 1  # this machine: another Python / torch, no GPU


def test_source_hash_follows_the_sources(tmp_path):
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "a.cu").write_text("x")
    (tmp_path / "setup.py").write_text("y")
    before = gpu_prebuilt.source_hash(str(tmp_path))
    (tmp_path / "csrc" / "a.cu").write_text("z")
    assert gpu_prebuilt.source_hash(str(tmp_path)) != before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--stage", "1", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert subprocess.run(["bash", "benchmarks/gpu_check.sh", "--stage", "3", "out"], cwd=ROOT,
                          capture_output=True, text=True).returncode == 2


@pytest.mark.slow
def test_dry_run_shows_each_stage_within_budget():
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in (1, 2):
        assert re.search(rf"stage {stage}: ~\d+ s of 360 s: within budget", done.stdout), done.stdout
    counts = [int(n) for n in re.findall(r"^\s+native\s+(\d+) cases", done.stdout, re.M)]
    assert counts and counts[0] > 100  # the collection saw the GPU tier (KERNELS_COLLECT_AS_GPU)
