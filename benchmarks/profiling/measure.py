"""The timing phase (profiler off) and the peak memory of a model's steps.

* Step time: every timed step on its own clock (CUDA events on a GPU, ``time.perf_counter`` on the CPU). Several
  variants are timed in turns, a step each, the order rotating every round (performance.md: a slow spell of a shared
  machine then falls on every variant alike). Nothing else runs between the steps: no hooks, no ranges, no sync
  (CUDA: one synchronisation after the last step), so the figure is a plain loop's (NOTES.md has the check).
* Peak memory, measured over the warm-up steps, on top of what was allocated before them (the weights): CUDA
  ``max_memory_allocated``; CPU the peak resident set size, sampled every millisecond by a thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable

import torch

from ..timing import Timing, _summarise


def time_steps(steps: dict[str, Callable], count: int, device: torch.device, *, progress=None) -> dict[str, Timing]:
    """``count`` timed calls of each closure in ``steps``, interleaved; ``progress`` is called after each round."""
    names = list(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = {name: [] for name in names}
        for r in range(count):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                steps[name]()
                end.record()
                events[name].append((start, end))
            if progress:
                progress()
        torch.cuda.synchronize(device)
        return {name: _summarise([s.elapsed_time(e) / 1e3 for s, e in pairs]) for name, pairs in events.items()}
    samples = {name: [] for name in names}
    for r in range(count):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
        if progress:
            progress()
    return {name: _summarise(values) for name, values in samples.items()}


class _ResidentPeak(threading.Thread):
    """Samples the process's resident set size (``/proc/self/statm``) until stopped; ``peak`` in bytes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start_bytes = self.peak = self.read()
        self._stop_event = threading.Event()

    def read(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def run(self):
        while not self._stop_event.wait(0.001):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.read())
        return self.peak - self.start_bytes


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """``with peak_memory(device) as result: ...``; then ``result["bytes"]``: the peak on top of the memory in use
    at the start (None where it cannot be read)."""
    result: dict = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - baseline
        return
    if not os.path.exists("/proc/self/statm"):
        yield result
        return
    sampler = _ResidentPeak()
    sampler.start()
    try:
        yield result
    finally:
        result["bytes"] = sampler.stop()
