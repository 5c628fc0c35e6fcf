"""Runs the cases of the chosen suites: every provider of a case timed in turn, in one process, then compared."""

from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .ceilings import Ceilings
from .suite import OUR_PROVIDERS, Case, Unavailable
from .timing import measure


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
    ratios: dict[str, float] = field(default_factory=dict)  # peer -> peer time / this time (> 1: this is faster)
    best_peer: str | None = None
    ratio_to_best_peer: float | None = None


def run_cases(cases: Iterable[Case], ceilings: Ceilings, *, providers: set[str] | None, budget_s: float,
              cuda_graph: bool = False, progress=sys.stderr) -> list[Result]:
    cases = list(cases)
    results: list[Result] = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        chosen = {name: setup for name, setup in case.providers.items() if providers is None or name in providers}
        group = [_run_provider(case, name, setup, ceilings, budget_s, cuda_graph) for name, setup in chosen.items()]
        _compare(group)
        results.extend(group)
        if progress is not None:
            elapsed = time.perf_counter() - started
            done = ", ".join(f"{r.provider} {r.median_ms:.3g} ms" if r.status == "ok" else f"{r.provider} -"
                             for r in group)
            print(f"[{index}/{len(cases)} {elapsed:5.0f}s] {case.op} {case.mode} {case.shape_text()}: {done}",
                  file=progress, flush=True)
    return results


def _run_provider(case: Case, name: str, setup, ceilings: Ceilings, budget_s: float, cuda_graph: bool) -> Result:
    result = Result(case.op, case.mode, case.shape_text(), str(case.dtype).replace("torch.", ""), str(case.device),
                    name, "ok")
    try:
        closure = setup()
        timing = measure(closure, case.device, budget_s=budget_s, cuda_graph=cuda_graph)
    except Unavailable as reason:
        result.status, result.reason = "unavailable", str(reason)
        return result
    except Exception as error:  # noqa: BLE001  (a failing provider is recorded, the sweep goes on)
        result.status = "error"
        result.reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        traceback.print_exc(limit=2)
        return result
    finally:
        gc.collect()
        if case.device.type == "cuda":
            torch.cuda.empty_cache()
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
