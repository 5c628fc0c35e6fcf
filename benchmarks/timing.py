"""Timing one closure the way performance.md prescribes.

* CUDA: one pair of CUDA events around every call, after warm-up; the L2 cache is flushed (a 256 MiB buffer is
  overwritten) before each call, outside the timed region, so memory-bound kernels read from HBM; the peak memory of
  the calls is recorded. Optionally CUDA-graph replay for launch-bound shapes.
* CPU: ``time.perf_counter`` around every call, after warm-up. The providers of one case are timed in turns
  (``measure_interleaved``: rounds of a few calls each, in a rotating order), so that a slow spell of a shared machine
  (another tenant, frequency changes) falls on every provider alike instead of on whichever ran at that moment: the
  ratios, the figures that count, stay stable where sequential timing moved them by 10-20%.
The statistic is the median, with the 20th and 80th percentiles.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

_L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    peak_memory_bytes: int | None = None


def _quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _summarise(samples: list[float], peak: int | None = None) -> Timing:
    ordered = sorted(samples)
    return Timing(statistics.median(ordered), _quantile(ordered, 0.2), _quantile(ordered, 0.8), len(ordered), peak)


def measure(fn: Callable[[], Any], device: torch.device, *, budget_s: float = 0.5, warmup: int = 3,
            min_repeats: int = 5, max_repeats: int = 200, cuda_graph: bool = False) -> Timing:
    """Times ``fn`` on ``device``: warm-up calls, then as many timed calls as fit ``budget_s`` (within the bounds)."""
    if device.type == "cuda":
        return _measure_cuda(fn, budget_s, warmup, min_repeats, max_repeats, cuda_graph)
    return _measure_cpu(fn, budget_s, warmup, min_repeats, max_repeats)


def _repeats_for(one_call_s: float, budget_s: float, min_repeats: int, max_repeats: int) -> int:
    return max(min_repeats, min(max_repeats, int(budget_s / max(one_call_s, 1e-7))))


def _measure_cpu(fn, budget_s, warmup, min_repeats, max_repeats) -> Timing:
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    one_call = (time.perf_counter() - start) / max(warmup, 1)
    samples = []
    for _ in range(_repeats_for(one_call, budget_s, min_repeats, max_repeats)):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _summarise(samples)


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, budget_s: float = 0.5, warmup: int = 3,
                        min_repeats: int = 5, max_repeats: int = 200, rounds: int = 8
                        ) -> dict[str, Timing | BaseException]:
    """Times several CPU closures in turns: each gets warm-up calls, then its timed calls (as many as fit ``budget_s``,
    within the bounds) spread over ``rounds`` rounds; round r starts with closure r mod n. A closure that raises gets
    its exception instead of a Timing and leaves the rotation."""
    names = list(fns)
    if not names:
        return {}
    repeats: dict[str, int] = {}
    outcome: dict[str, Timing | BaseException] = {}
    for name in names:
        try:
            start = time.perf_counter()
            for _ in range(warmup):
                fns[name]()
            one_call = (time.perf_counter() - start) / max(warmup, 1)
        except Exception as error:  # noqa: BLE001  (recorded by the caller)
            outcome[name] = error
            continue
        repeats[name] = _repeats_for(one_call, budget_s, min_repeats, max_repeats)
    samples: dict[str, list[float]] = {name: [] for name in repeats}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in outcome:
                continue
            share = repeats[name] // rounds + (1 if r < repeats[name] % rounds else 0)
            try:
                for _ in range(share):
                    start = time.perf_counter()
                    fns[name]()
                    samples[name].append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001
                outcome[name] = error
    for name, values in samples.items():
        if name not in outcome:
            outcome[name] = _summarise(values)
    return outcome


def _measure_cuda(fn, budget_s, warmup, min_repeats, max_repeats, cuda_graph) -> Timing:
    flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    if cuda_graph:
        fn = _as_graph(fn)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    fn()
    end_event.record()
    torch.cuda.synchronize()
    one_call = start_event.elapsed_time(end_event) / 1e3
    repeats = _repeats_for(one_call, budget_s, min_repeats, max_repeats)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    for i in range(repeats):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    return _summarise([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], peak)


def _as_graph(fn):
    """Captures ``fn`` in a CUDA graph (after a warm-up on a side stream) and returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
