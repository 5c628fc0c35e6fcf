"""The machine's two ceilings, measured in the same run as the kernels: memory bandwidth (a large device-to-device
copy; bytes read + written) and the matmul rate (``torch.matmul``: bf16 on a GPU, fp32 on the CPU).

A ceiling is an upper bound, so it is the *best* rate seen, not a typical one: every size is timed several times and
its fastest call counts, and the matmul rate is the best over several sizes (small ones fit the caches, large ones
amortise the packing; which wins depends on the machine). A median on a shared machine measures the other tenants
too: two runs a minute apart gave 0.10 and 0.22 TFLOP/s, and records then showed kernels at 219% "of ceiling".
The CPU figures are measured with the run's thread count (``torch.get_num_threads()`` when called, recorded here).

A kernel faster than a ceiling means the ceiling was measured wrong (too little time, a noisy spell): such fractions
are flagged, never shown as plain numbers (:func:`fraction_text`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

# Matmul sizes (square, n x n x n) and copy sizes (MiB) per device and mode.
_MATMUL_SIZES = {("cuda", False): (4096, 8192), ("cuda", True): (2048, 4096),
                 ("cpu", False): (512, 1024, 2048), ("cpu", True): (256, 512, 1024)}
_COPY_MIB = {("cuda", False): 2048, ("cuda", True): 256, ("cpu", False): 256, ("cpu", True): 64}


@dataclass(frozen=True)
class Ceilings:
    bandwidth_gbs: float
    matmul_tflops: float
    matmul_dtype: str
    copy_bytes: int
    matmul_size: int  # the size that gave matmul_tflops
    threads: int | None = None  # torch.get_num_threads() while measuring (None in records older than the field)
    matmul_tflops_by_size: dict[str, float] = field(default_factory=dict)  # str(size) -> TFLOP/s (JSON keys)
    statistic: str = "median"  # of the timed calls: "best" since best-of-repeats; older records hold medians

    def as_dict(self) -> dict:
        return asdict(self)


def _best_seconds(fn: Callable[[], Any], device: torch.device, *, repeats: int, budget_s: float) -> float:
    """The fastest of up to ``repeats`` timed calls (at least 3, at most ``budget_s`` of calls), after one warm-up."""
    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    best, spent = float("inf"), 0.0
    for i in range(repeats):
        seconds = timed()
        best, spent = min(best, seconds), spent + seconds
        if i >= 2 and spent > budget_s:
            break
    return best


def measure_ceilings(device: torch.device, quick: bool = False, *, repeats: int = 30) -> Ceilings:
    """Measures both ceilings on ``device`` with the current thread count: best of ``repeats`` calls per size."""
    device = torch.device(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    budget_s = 0.5 if quick else 1.5
    copy_bytes = _COPY_MIB[(kind, quick)] * 1024 * 1024
    source = torch.randn(copy_bytes // 4, device=device)
    target = torch.empty_like(source)
    copy_s = _best_seconds(lambda: target.copy_(source), device, repeats=repeats, budget_s=budget_s)
    del source, target
    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    by_size = {}
    for size in _MATMUL_SIZES[(kind, quick)]:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), device, repeats=repeats, budget_s=budget_s)
        by_size[str(size)] = 2 * size**3 / seconds / 1e12
    best_size = max(by_size, key=by_size.get)
    return Ceilings(
        bandwidth_gbs=2 * copy_bytes / copy_s / 1e9,
        matmul_tflops=by_size[best_size],
        matmul_dtype=str(dtype).replace("torch.", ""),
        copy_bytes=copy_bytes,
        matmul_size=int(best_size),
        threads=torch.get_num_threads() if kind == "cpu" else None,
        matmul_tflops_by_size=by_size,
        statistic="best",
    )


def exceeds_ceiling(fraction: float | None) -> bool:
    """True when a result claims more than 100% of a ceiling: the ceiling was measured too low."""
    return fraction is not None and fraction > 1.0


def fraction_text(fraction: float | None) -> str:
    """A fraction of ceiling for tables: ``"87.3%"``, ``"-"`` when none, and above 100% ``"219.0% (!)"`` (see
    :data:`WRONG_CEILING_NOTE`)."""
    if fraction is None:
        return "-"
    text = f"{100 * fraction:.1f}%"
    return f"{text} (!)" if exceeds_ceiling(fraction) else text


WRONG_CEILING_NOTE = ("(!) above 100% of a ceiling: the ceiling is wrong (measured too low, e.g. in a noisy spell of a "
                      "shared machine), not the kernel faster than the machine; rerun on a quieter machine")
