"""Runs the stages of the GPU check (benchmarks/gpu_plan.py says what they hold) into one output folder, as it goes:

    OUT/setup.log          gpu_check.sh's extension set-up (prebuilt .so or a build here, timed)
    OUT/stage<N>.log       every step's output (pytest -rA --durations=20, sanitizers, the benchmark), unbuffered
    OUT/stage<N>-junit.xml the JUnit XML of the stage's pytest steps, merged after each step
    OUT/bench-record.json  the benchmark record (steady-state and cold-start times); OUT/bench-table.md its table
    OUT/summary.md         one row per step: status, cases passed / failed / skipped, seconds measured and estimated

At most 8 files (what is more goes into OUT/extra.tar.gz). Each step is stopped (SIGINT, so pytest still writes its
report; SIGKILL 30 s later) when it would eat into the time the stage's later steps need (their ``min_s``); a stopped
or failed step does not stop the stage. The summary table is printed last.

    python -m benchmarks.gpu_run run --stage 1|2 --budget SECONDS --out OUT [--full]
    python -m benchmarks.gpu_run versions
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from .gpu_plan import ROOT, STAGES, STAGE_BUDGET_S, Step, bench_command, compilations, estimate, steps

MAX_FILES = 8
MIN_STEP_S = 20  # a step with less time than this left is skipped


@dataclass
class Row:
    stage: int
    step: str
    status: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    estimated: float = 0.0


def versions() -> int:
    """Versions of everything that matters, the extension's state and the backend table; exit 1 without CUDA kernels."""
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, C++11 ABI "
          f"{torch._C._GLIBCXX_USE_CXX11_ABI})")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    for command in (["nvcc", "--version"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
                                            "--format=csv,noheader"], ["compute-sanitizer", "--version"]):
        if shutil.which(command[0]):
            lines = subprocess.run(command, capture_output=True, text=True).stdout.strip().splitlines()
            print(f"{command[0]}: {lines[-1] if lines else '?'}")
        else:
            print(f"{command[0]}: not found")
    if torch.cuda.is_available():
        print(f"GPU 0: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
    from kernels import _extension

    print(f"kernels._C: {_extension.extension_status()}; cuBLASLt path: "
          f"{bool(getattr(_extension._C, 'with_cublaslt', False))}")
    subprocess.run([sys.executable, "-m", "kernels"], cwd=ROOT, check=False)
    return 0 if _extension._C is not None and _extension._C.with_cuda else 1


def _run_logged(command: list[str], env: dict, seconds: float, log) -> tuple[str, float]:
    """Runs ``command`` with its output appended to ``log``; stops it after ``seconds``. (status, seconds taken)."""
    started = time.monotonic()
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        code = process.wait(timeout=seconds)
        status = "passed" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)  # pytest writes its summary and JUnit XML on an interrupt
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        status = f"stopped at {seconds:.0f} s"
    return status, time.monotonic() - started


def _merge_junit(part: str, merged: str) -> tuple[int, int, int, list[str]]:
    """Appends the test suites of ``part`` to ``merged`` (created if absent), deletes ``part``; the part's
    (passed, failed, skipped, node ids)."""
    if not os.path.isfile(part):
        return 0, 0, 0, []
    suites = ElementTree.parse(part).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    passed = failed = skipped = 0
    for suite in suites:
        tests, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        fail = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed, failed, skipped = passed + tests - skip - fail, failed + fail, skipped + skip
    ids = [case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
           for suite in suites for case in suite.iter("testcase")]
    root = ElementTree.parse(merged).getroot() if os.path.isfile(merged) else ElementTree.Element("testsuites")
    root.extend(suites)
    ElementTree.ElementTree(root).write(merged, encoding="utf-8", xml_declaration=True)
    os.remove(part)
    return passed, failed, skipped, ids


def _pytest_command(step: Step, junit: str) -> list[str]:
    command = [sys.executable, "-m", "pytest", *step.args, "-rA", "--durations=20", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
    if step.workers > 1 and importlib.util.find_spec("xdist") is not None:
        command += ["-n", str(step.workers)]
    if step.kind == "sanitizer":
        command = ["compute-sanitizer", "--tool", step.tool, "--error-exitcode", "1", "--print-limit", "20",
                   *command]
    return command


def _run_step(stage: int, step: Step, seconds: float, out_dir: str, full: bool, log) -> Row:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KERNELS_NATIVE_CUDA_TRAINING": "1", **step.env}
    if step.kind == "versions":
        status, took = _run_logged([sys.executable, "-m", "benchmarks.gpu_run", "versions"], env, seconds, log)
        return Row(stage, step.name, status, seconds=took, estimated=estimate(step, 0, 0))
    if step.kind == "bench":
        env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cold-")  # cold starts with an empty cache
        bench_dir = os.path.join(out_dir, "bench")
        status, took = _run_logged(bench_command(bench_dir, full), env, seconds, log)
        for name in ("record.json", "table.md"):
            if os.path.isfile(os.path.join(bench_dir, name)):
                os.replace(os.path.join(bench_dir, name), os.path.join(out_dir, f"bench-{name}"))
        shutil.rmtree(bench_dir, ignore_errors=True)  # results.csv: the record's rows again
        return Row(stage, step.name, status, seconds=took, estimated=estimate(step, 0, 0))
    if step.kind == "sanitizer":
        if shutil.which("compute-sanitizer") is None:
            return Row(stage, step.name, "skipped (no compute-sanitizer)")
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # every allocation its own, so the checker sees overruns
    part = os.path.join(out_dir, f".stage{stage}-{step.name}.xml")
    status, took = _run_logged(_pytest_command(step, part), env, seconds, log)
    passed, failed, skipped, ids = _merge_junit(part, os.path.join(out_dir, f"stage{stage}-junit.xml"))
    guess = estimate(step, len(ids), compilations(ids, step) if step.kind == "pytest" else 0)
    return Row(stage, step.name, status, passed, failed, skipped, took, guess)


def run_stage(stage: int, budget: float, out_dir: str, full: bool) -> list[Row]:
    os.makedirs(out_dir, exist_ok=True)
    chosen = steps(stage, full)
    rows: list[Row] = []
    started = time.monotonic()
    with open(os.path.join(out_dir, f"stage{stage}.log"), "a", buffering=1) as log:
        log.write(f"== stage {stage}, budget {budget:.0f} s, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        for index, step in enumerate(chosen):
            left = budget - (time.monotonic() - started) - sum(later.min_s for later in chosen[index + 1:])
            if left < MIN_STEP_S:
                rows.append(Row(stage, step.name, "skipped (stage budget spent)"))
                continue
            print(f"[stage {stage}] {step.name}: {step.what} (up to {left:.0f} s)", flush=True)
            row = _run_step(stage, step, left, out_dir, full, log)
            rows.append(row)
            print(f"[stage {stage}] {step.name}: {row.status}, {row.passed} passed, {row.failed} failed, "
                  f"{row.skipped} skipped, {row.seconds:.0f} s", flush=True)
            write_summary(out_dir, stage, rows)
    limit_files(out_dir)
    return rows


def _table(rows: list[Row]) -> str:
    lines = ["| stage | step | status | passed | failed | skipped | seconds | estimate |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.step} | {r.status} | {r.passed} | {r.failed} | {r.skipped} | {r.seconds:.0f} | "
              f"{r.estimated:.0f} |" for r in rows]
    return "\n".join(lines)


def write_summary(out_dir: str, stage: int, rows: list[Row]) -> None:
    """summary.md: one section per stage; this stage's section replaced, the other's kept."""
    path = os.path.join(out_dir, "summary.md")
    sections = {}
    if os.path.isfile(path):
        with open(path) as source:
            for chunk in source.read().split("## stage ")[1:]:
                sections[int(chunk.split("\n", 1)[0])] = "## stage " + chunk.rstrip() + "\n"
    sections[stage] = f"## stage {stage}\n\n{_table(rows)}\n"
    with open(path, "w") as out:
        out.write("# GPU check summary\n\n" + "\n".join(sections[s] for s in sorted(sections)))


KEEP = ("summary.md", "stage1.log", "stage2.log", "stage1-junit.xml", "stage2-junit.xml", "bench-record.json",
        "setup.log", "bench-table.md")  # what stays beside extra.tar.gz, most wanted first


def limit_files(out_dir: str) -> None:
    """Keeps at most MAX_FILES files in ``out_dir`` (what comes back from the GPU machine): when there are more, the
    first MAX_FILES - 1 present of KEEP stay and the rest goes into extra.tar.gz."""
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(out_dir) for name in names)
    if len(files) <= MAX_FILES:
        return
    keep = [path for path in (os.path.join(out_dir, name) for name in KEEP) if path in files][:MAX_FILES - 1]
    extra = [path for path in files if path not in keep]
    archive = os.path.join(out_dir, "extra.tar.gz")
    with tarfile.open(archive + ".partial", "w:gz") as tar:
        for path in extra:
            tar.add(path, arcname=os.path.relpath(path, out_dir))
    for path in extra:
        os.remove(path)
    os.replace(archive + ".partial", archive)
    for folder, _, _ in sorted(os.walk(out_dir), reverse=True):
        if folder != out_dir and not os.listdir(folder):
            os.rmdir(folder)


def print_summary(out_dir: str) -> None:
    record = os.path.join(out_dir, "bench-record.json")
    if os.path.isfile(record):
        subprocess.run([sys.executable, "-m", "benchmarks.summary", record], cwd=ROOT, check=False)
    with open(os.path.join(out_dir, "summary.md")) as source:
        print(source.read())


def main(argv: list[str]) -> int:
    if argv[:1] == ["versions"]:
        return versions()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), required=True)
    parser.add_argument("--budget", type=float, default=STAGE_BUDGET_S, help="seconds for the stage")
    parser.add_argument("--out", required=True)
    parser.add_argument("--full", action="store_true", help="benchmark with torch.compile peers, longer timing")
    args = parser.parse_args(argv)
    rows = run_stage(args.stage, args.budget, args.out, args.full)
    return 0 if all(r.status == "passed" or r.status.startswith("skipped (no") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
