"""Runs the cases of the chosen suites: every provider of a case timed in one process, then compared. On a GPU the
providers run one after the other (CUDA events, L2 flushed per call); on the CPU they are timed in interleaved rounds
(timing.measure_interleaved), so the ratios hold on a shared, noisy machine."""

from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .ceilings import Ceilings
from .suite import OUR_PROVIDERS, Case, Unavailable
from .timing import Timing, measure, measure_interleaved


@dataclass
class Result:
    """One provider on one case."""

    op: str
    mode: str
    shape: str
    dtype: str
    device: str
    provider: str
    status: str  # "ok", "unavailable" or "error"
    reason: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    repeats: int = 0
    tflops: float | None = None
    gbs: float | None = None
    fraction_of_ceiling: float | None = None
    peak_memory_mb: float | None = None
    cold_start_ms: float | None = None  # setup and the first call: JIT compilation and autotuning included
    ratios: dict[str, float] = field(default_factory=dict)  # peer -> peer time / this time (> 1: this is faster)
    best_peer: str | None = None
    ratio_to_best_peer: float | None = None


def run_cases(cases: Iterable[Case], ceilings: Ceilings, *, providers: set[str] | None, budget_s: float,
              cuda_graph: bool = False, progress=sys.stderr,
              on_case: Callable[[list[Result]], None] | None = None) -> list[Result]:
    """Times every chosen provider of every case; ``on_case(results so far)`` after each case (e.g. to write the
    record as it goes, so that a run stopped midway leaves what it measured)."""
    cases = list(cases)
    results: list[Result] = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        chosen = {name: setup for name, setup in case.providers.items() if providers is None or name in providers}
        if case.device.type == "cpu":
            group = _run_interleaved(case, chosen, ceilings, budget_s)
        else:
            group = [_run_provider(case, name, setup, ceilings, budget_s, cuda_graph) for name, setup in chosen.items()]
        _compare(group)
        results.extend(group)
        if on_case is not None:
            on_case(results)
        if progress is not None:
            elapsed = time.perf_counter() - started
            done = ", ".join(f"{r.provider} {r.median_ms:.3g} ms" if r.status == "ok" else f"{r.provider} -"
                             for r in group)
            print(f"[{index}/{len(cases)} {elapsed:5.0f}s] {case.op} {case.mode} {case.shape_text()}: {done}",
                  file=progress, flush=True)
    return results


def _new_result(case: Case, name: str) -> Result:
    return Result(case.op, case.mode, case.shape_text(), str(case.dtype).replace("torch.", ""), str(case.device),
                  name, "ok")


def _record_failure(result: Result, error: BaseException) -> Result:
    """A provider that is unavailable or fails is recorded; the sweep goes on."""
    if isinstance(error, Unavailable):
        result.status, result.reason = "unavailable", str(error)
    else:
        result.status = "error"
        result.reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        traceback.print_exception(error, limit=2)
    return result


def _cold_start(setup, device: torch.device):
    """(closure, seconds): the provider's setup (which probes our ops once) and its closure's first call, synchronised:
    what a user waits for on the first call of a shape, JIT compilation and autotuning included. Cold only for the
    first case of a kernel specialisation in the process (and with an empty Triton cache: gpu_check.sh gives the
    benchmark a fresh TRITON_CACHE_DIR)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    closure = setup()
    closure()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return closure, time.perf_counter() - start


def _run_provider(case: Case, name: str, setup, ceilings: Ceilings, budget_s: float, cuda_graph: bool) -> Result:
    result = _new_result(case, name)
    try:
        closure, cold_s = _cold_start(setup, case.device)
        result.cold_start_ms = cold_s * 1e3
        timing = measure(closure, case.device, budget_s=budget_s, cuda_graph=cuda_graph)
    except Exception as error:  # noqa: BLE001
        return _record_failure(result, error)
    finally:
        gc.collect()
        if case.device.type == "cuda":
            torch.cuda.empty_cache()
    return _fill(result, timing, case, ceilings)


def _run_interleaved(case: Case, chosen: dict, ceilings: Ceilings, budget_s: float) -> list[Result]:
    """CPU: sets up every provider of the case, then times them in interleaved rounds."""
    results = {name: _new_result(case, name) for name in chosen}
    closures = {}
    for name, setup in chosen.items():
        try:
            closures[name], cold_s = _cold_start(setup, case.device)
            results[name].cold_start_ms = cold_s * 1e3
        except Exception as error:  # noqa: BLE001
            _record_failure(results[name], error)
    for name, outcome in measure_interleaved(closures, budget_s=budget_s).items():
        if isinstance(outcome, Timing):
            _fill(results[name], outcome, case, ceilings)
        else:
            _record_failure(results[name], outcome)
    closures.clear()
    gc.collect()
    return list(results.values())


def _fill(result: Result, timing: Timing, case: Case, ceilings: Ceilings) -> Result:
    result.median_ms, result.p20_ms, result.p80_ms = (timing.median_s * 1e3, timing.p20_s * 1e3, timing.p80_s * 1e3)
    result.repeats = timing.repeats
    if timing.peak_memory_bytes is not None:
        result.peak_memory_mb = timing.peak_memory_bytes / 2**20
    if case.flops:
        result.tflops = case.flops / timing.median_s / 1e12
        result.fraction_of_ceiling = result.tflops / ceilings.matmul_tflops
    if case.bytes:
        result.gbs = case.bytes / timing.median_s / 1e9
        if not case.flops:
            result.fraction_of_ceiling = result.gbs / ceilings.bandwidth_gbs
    return result


def _compare(group: list[Result]) -> None:
    """Ratios of every provider to every other on the same case; the best peer of one of ours is the fastest provider
    that is not ours, and of a peer the fastest other peer."""
    ok = [r for r in group if r.status == "ok"]
    for result in ok:
        others = [r for r in ok if r is not result]
        result.ratios = {r.provider: r.median_ms / result.median_ms for r in others}
        peers = [r for r in others if r.provider not in OUR_PROVIDERS]
        if peers:
            best = min(peers, key=lambda r: r.median_ms)
            result.best_peer = best.provider
            result.ratio_to_best_peer = best.median_ms / result.median_ms
