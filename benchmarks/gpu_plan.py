"""The GPU check's plan: what each stage of ``benchmarks/gpu_check.sh`` runs, how many test cases and Triton
compilations that is, and how long it should take; ``--dry-run`` prints it on any machine.

Stage 1 (one cold H200, budget 6 min): versions and the extension, the native CUDA tests (attention dense and
varlen, layer norm, masked softmax, residual add, linear / cuBLASLt: every GPU case not on the Triton backend), then
the Triton tests with one configuration per kernel (``KERNELS_TRITON_ONE_CONFIG=1``; realistic shapes in fp16/fp32).
Stage 2 (the warm machine, budget 6 min): the Triton tests on realistic shapes (bf16) with autotuning, compute-sanitizer
memcheck and racecheck on small native attention and layer-norm cases, and a short benchmark (attention fwd and
fwd+bwd at (4, 16, 4096, 128) with and without padding, layer norm and feed-forward at one large shape each; peers
SDPA's backends and eager) that records each case's cold start beside its steady-state time.

Case counts come from ``pytest --collect-only`` with the selection each step runs; without a GPU the collection
simulates one (``KERNELS_COLLECT_AS_GPU=1``, tests/conftest.py), so the counts are the GPU machine's. The time
estimate is a cost model (``COST``) whose constants are first guesses until a GPU run measures them: the runner
(benchmarks/gpu_run.py) writes each step's measured time beside its estimate, and stops a step at its share of the
stage budget whatever the estimate said.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_BUDGET_S = 360

# Cost model (seconds). A pytest process imports torch, kernels and the test modules and creates a CUDA context; a
# native case is a few launches and a reference on small-to-moderate shapes; a Triton compilation (one kernel
# specialisation: ptxas included) takes ~1-3 s on one core, the workers (-n) compile in parallel; an autotuned
# specialisation compiles and benchmarks each of its candidates; compute-sanitizer multiplies a case's time.
COST = {"pytest_start": 20.0, "native_case": 0.25, "triton_case": 0.3, "compile": 2.0, "inductor_case": 30.0,
        "sanitizer_start": 30.0, "sanitizer_case": 10.0, "bench_start": 25.0, "bench_run": 1.2, "versions": 15.0}
# Kernels one case of a test file compiles at most (the forward and backward launchers of its op), and the candidates
# an autotuned specialisation compiles (attention: 2 x 2 warps/stages; linear: its pruned candidates; the other
# launchers do not autotune).
KERNELS_PER_CASE = {"test_attention.py": 4, "test_attention_gpu.py": 4, "test_attention_dropout.py": 4,
                    "test_attention_varlen.py": 4, "test_attention_masks.py": 4, "test_nonfinite_attention.py": 4,
                    "test_layer_norm.py": 3, "test_layer_norm_gpu.py": 3, "test_nonfinite_layer_norm.py": 3,
                    "test_masked_softmax.py": 2, "test_nonfinite_masked_softmax.py": 2, "test_residual_add.py": 1,
                    "test_linear.py": 2, "test_feed_forward.py": 4, "test_triton_launchers.py": 4}
AUTOTUNE_CANDIDATES = {"test_attention.py": 4, "test_attention_gpu.py": 4, "test_attention_varlen.py": 4,
                       "test_linear.py": 8, "test_feed_forward.py": 8}
WORKERS = 12  # pytest-xdist workers (16 cores): Triton steps are bound by compilation, native ones by Python

# Both tiers' steps select from the whole suite by marker and keyword, so that a new GPU test lands in one of them: a
# case whose id names the triton backend (or from tests/test_triton_launchers.py) is a Triton case, any other GPU case
# a native one (CUDA kernels of kernels._C, the torch reference on CUDA, the modules on CUDA).
SUITE = ("tests",)
# Stage 2, autotuned: the bf16 cases on realistic shapes (test_gpu_realistic's first dtype, "dtype0" / the masked
# softmax's "torch.bfloat16") and the test of autotuning itself. Every other Triton case runs in stage 1 with one
# configuration; torch.compile cases with --full.
AUTOTUNED_K = "retuned or (realistic and (dtype0 or bfloat16))"


@dataclass(frozen=True)
class Step:
    """One step of a stage. ``kind``: versions, pytest, sanitizer or bench."""

    name: str
    kind: str
    what: str
    args: tuple[str, ...] = ()  # pytest arguments: files, then -m / -k
    env: dict = field(default_factory=dict)
    workers: int = 1
    tool: str = ""  # compute-sanitizer --tool
    autotuned: bool = False
    full_only: bool = False  # runs with --full only
    min_s: float = 30.0  # the time earlier steps leave it (benchmarks/gpu_run.py stops them to keep it)


def _k(*expressions: str) -> str:
    return " and ".join(f"({e})" for e in expressions)




# The small native cases the sanitizers run (compute-sanitizer slows every launch 10-100x): the dense forward and
# backward with causal + padding + bool masks (head dim 64), varlen causal, layer norm with a residual on strided
# inputs (1024 x 1024); racecheck (slower) the first only.
_DENSE = "tests/test_attention_native_cuda.py::test_head_dims_forward_backward"
_VARLEN = "tests/test_attention_native_cuda.py::test_varlen_matches_reference"
_NORM = "tests/test_layer_norm_gpu.py::test_gpu_non_contiguous_and_large_magnitudes"
SANITIZED = {
    "memcheck": (f"{_DENSE}[causal+padding+bool-1x2x1x97x45-64-torch.float16]",
                 f"{_VARLEN}[True-64-torch.float16]", f"{_NORM}[native-layer_norm]"),
    "racecheck": (f"{_DENSE}[causal+padding+bool-1x2x1x97x45-64-torch.float16]",),
}

STAGES: dict[int, tuple[Step, ...]] = {
    1: (
        Step("versions", "versions", "Python, torch, Triton, CUDA, GPU; kernels._C loads with CUDA kernels; backends"),
        Step("native", "pytest", "native CUDA tests: attention dense + varlen, layer norm, masked softmax, residual "
             "add, linear / cuBLASLt, the modules on CUDA",
             (*SUITE, "-m", "gpu", "-k", _k("not triton", "not launchers", "not compile")),
             workers=WORKERS),
        Step("triton-one-config", "pytest", "Triton tests, one configuration per kernel (realistic shapes: fp16, fp32)",
             (*SUITE, "-m", "gpu", "-k", _k("triton or launchers", f"not ({AUTOTUNED_K})", "not compile")),
             env={"KERNELS_TRITON_ONE_CONFIG": "1"}, workers=WORKERS),
    ),
    2: (
        Step("triton-autotuned", "pytest", "Triton tests with autotuning on realistic shapes (bf16)",
             (*SUITE, "-m", "gpu", "-k", _k("triton or launchers", AUTOTUNED_K, "not compile")),
             workers=WORKERS, autotuned=True),
        Step("memcheck", "sanitizer", "compute-sanitizer memcheck: small native attention and layer-norm cases",
             SANITIZED["memcheck"], tool="memcheck"),
        Step("racecheck", "sanitizer", "compute-sanitizer racecheck: the dense attention case",
             SANITIZED["racecheck"], tool="racecheck"),
        Step("benchmark", "bench", "attention fwd, fwd+bwd (4, 16, 4096, 128) +- padding; layer norm, feed-forward "
             "one large shape; peers SDPA backends + eager; cold start and steady state", min_s=120.0),
        Step("torch-compile", "pytest", "our ops under torch.compile (inductor): --full only",
             (*SUITE, "-m", "gpu", "-k", "compile"), workers=WORKERS,
             full_only=True),
    ),
}

# The benchmark step: cases (--match, full match of "op mode shape label") and providers.
BENCH_MATCH = (r"attention (fwd|fwd\+bwd) B=4 S=4096 H=16 D=128( key padding mask)?",
               r"layer_norm (fwd|fwd\+bwd) rows=32768 hidden=4096",
               r"feed_forward (fwd|fwd\+bwd) tokens=8192 d_model=1024 ffn=4096 gelu")
BENCH_PEERS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "eager")  # SDPA's math backend is eager's algorithm
BENCH_CASES = 8  # 2 attention variants x 2 modes, 2 layer-norm modes, 2 feed-forward modes
# Timed runs (a provider on a case: attention has ours and the four peers, the others ours and eager) and the Triton
# compilations of their cold starts (attention: 4 forward + 9 backward candidates per variant; layer norm 3; the
# feed-forward block's GEMMs: 8 candidates of each of 3 kernels).
BENCH_RUNS = 4 * (2 + len(BENCH_PEERS)) + 2 * 3 + 2 * 3
BENCH_COMPILES = 2 * 13 + 3 + 24


def bench_command(out_dir: str, full: bool) -> list[str]:
    providers = ["triton", "native", *BENCH_PEERS] + (["sdpa-math", "torch.compile"] if full else [])
    command = [sys.executable, "-m", "benchmarks", "--device", "cuda", "--op", "attention", "--op", "layer_norm",
               "--op", "feed_forward", "--mode", "fwd", "--mode", "fwd+bwd", "--budget", "1.0" if full else "0.1",
               "--no-plots", "--out", out_dir]
    for pattern in BENCH_MATCH:
        command += ["--match", pattern]
    for provider in providers:
        command += ["--provider", provider]
    return command


def collect(step: Step) -> list[str]:
    """The node ids the step's pytest selection collects (on a machine without a GPU: as the GPU machine would)."""
    env = {**os.environ, "KERNELS_COLLECT_AS_GPU": "1", **step.env}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *step.args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise SystemExit(f"gpu_plan: collecting {step.name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return [line for line in done.stdout.splitlines() if "::" in line]


def compilations(node_ids: list[str], step: Step) -> int:
    """Estimated Triton compilations: each case a new specialisation (its dtypes, flags and head dim are constexprs,
    and Triton specialises integer arguments on divisibility by 16, so new sizes mostly compile again) of each
    kernel a case of its file launches, times the candidates when autotuned. 0 for the native steps."""
    if step.name in ("native", "memcheck", "racecheck"):
        return 0
    total = 0
    for node_id in node_ids:
        test_file = os.path.basename(node_id.split("::")[0])
        total += KERNELS_PER_CASE.get(test_file, 2) * (AUTOTUNE_CANDIDATES.get(test_file, 1) if step.autotuned else 1)
    return total


def estimate(step: Step, cases: int, compiles: int) -> float:
    """Seconds the step should take on an H200 by the cost model."""
    if step.kind == "versions":
        return COST["versions"]
    if step.kind == "bench":  # one process: its compilations are not spread over workers
        return COST["bench_start"] + BENCH_RUNS * COST["bench_run"] + BENCH_COMPILES * COST["compile"]
    if step.kind == "sanitizer":
        return COST["sanitizer_start"] + cases * COST["sanitizer_case"]
    per_case = {"native": COST["native_case"], "torch-compile": COST["inductor_case"]}.get(step.name,
                                                                                            COST["triton_case"])
    return COST["pytest_start"] + (cases * per_case + compiles * COST["compile"]) / step.workers


@dataclass
class Planned:
    step: Step
    cases: int
    compiles: int
    seconds: float


def steps(stage: int, full: bool) -> list[Step]:
    return [step for step in STAGES[stage] if full or not step.full_only]


def plan(stage: int, full: bool) -> list[Planned]:
    planned = []
    for step in steps(stage, full):
        ids = collect(step) if step.kind in ("pytest", "sanitizer") else []
        cases = BENCH_CASES if step.kind == "bench" else len(ids)
        compiles = compilations(ids, step) if step.kind == "pytest" else BENCH_COMPILES if step.kind == "bench" else 0
        planned.append(Planned(step, cases, compiles, estimate(step, cases, compiles)))
    return planned


def describe(step: Step, out_dir: str = "OUT", full: bool = False) -> str:
    """The command line the step runs (for the plan)."""
    if step.kind == "versions":
        return "python -m benchmarks.gpu_run versions"
    if step.kind == "bench":
        return " ".join(repr(a) if " " in a else a for a in bench_command(f"{out_dir}/bench", full)[1:])
    prefix = f"compute-sanitizer --tool {step.tool} " if step.kind == "sanitizer" else ""
    workers = f" -n {step.workers}" if step.workers > 1 else ""
    env = "".join(f"{k}={v} " for k, v in step.env.items())
    return f"{env}{prefix}pytest{workers} " + " ".join(repr(a) if " " in a else a for a in step.args)


def print_plan(stages: list[int], budget: float, full: bool = False) -> bool:
    """Prints each stage's steps with their counts and estimates; True when every stage fits its budget."""
    fits = True
    for stage in stages:
        planned = plan(stage, full)
        total = sum(p.seconds for p in planned)
        print(f"== stage {stage} (budget {budget:.0f} s)")
        for p in planned:
            print(f"  {p.step.name:<18} {p.cases:>5} cases {p.compiles:>5} Triton compilations  ~{p.seconds:5.0f} s"
                  f"  {p.step.what}")
            print(f"      $ {describe(p.step, full=full)}")
        verdict = "within budget" if total <= budget else "OVER BUDGET"
        print(f"  stage {stage}: ~{total:.0f} s of {budget:.0f} s: {verdict}")
        fits &= total <= budget
    return fits


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["1", "2", "all"], default="all")
    parser.add_argument("--budget", type=float, default=STAGE_BUDGET_S, help="seconds per stage")
    parser.add_argument("--full", action="store_true", help="the benchmark with torch.compile peers")
    args = parser.parse_args(argv)
    stages = [1, 2] if args.stage == "all" else [int(args.stage)]
    return 0 if print_plan(stages, args.budget, args.full) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
