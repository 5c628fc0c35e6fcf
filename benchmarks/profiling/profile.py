"""``Profile``: what ``profile_model`` measured, per variant (the model as given, ``"eager"``, and its swapped copy,
``"swapped"``); printable as a table, ``to_json()`` for the record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tabulate import tabulate

from ..ceilings import WRONG_CEILING_NOTE, exceeds_ceiling, fraction_text
from .blocks import BLOCK_LABELS, BLOCKS

SCHEMA_VERSION = 1


@dataclass
class VariantProfile:
    """One variant. Times in seconds; ``blocks``: block -> {"seconds": per profiled step, "share": of the profiled
    time}; ``top``: the ops (CPU) or kernels (CUDA) with the most self time, each {name, seconds (per step), calls
    (per step), share, block, ours}."""

    name: str
    step_time_s: dict  # {"median", "p20", "p80"} of the timed steps (profiler off)
    steps: int
    tokens_per_step: int | None
    tokens_per_s: float | None
    flops_per_step: int
    achieved_tflops: float
    mfu: float | None  # achieved / the measured matmul ceiling
    peak_memory_bytes: int | None  # memory the steps add on top of the model (activations, gradients, optimizer)
    parameter_bytes: int
    blocks: dict
    profiled_steps: int
    profiled_time_s: float  # per step, as the profiler saw it (CPU: op time; CUDA: kernel time)
    top: list = field(default_factory=list)
    ours_share: float = 0.0  # of the profiled time, in this package's ops
    trace: str | None = None
    swap_report: str | None = None

    def block_share(self, block: str) -> float:
        return self.blocks[block]["share"]


@dataclass
class Profile:
    """The result of :func:`benchmarks.profile_model`: ``variants`` (one or two :class:`VariantProfile`), the run's
    settings, the machine's measured ceilings and environment. ``str(profile)`` is the table; ``to_json()`` the
    record; ``speedup`` swapped over eager step time when both ran."""

    model: str
    mode: str
    device: str
    dtype: str
    backend: str
    warmup: int
    ceilings: dict
    environment: dict
    variants: list[VariantProfile]
    flop_counter: str = "torch.utils.flop_counter.FlopCounterMode over one step, with formulas for the kernels:: ops"
    notes: list[str] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)  # name -> path of what was written (profile.json, traces, PNG)

    def __getitem__(self, name: str) -> VariantProfile:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"no variant {name!r}; have {[v.name for v in self.variants]}")

    @property
    def speedup(self) -> float | None:
        names = [v.name for v in self.variants]
        if "eager" not in names or "swapped" not in names:
            return None
        return self["eager"].step_time_s["median"] / self["swapped"].step_time_s["median"]

    def as_dict(self) -> dict:
        record = asdict(self)
        record["schema_version"] = SCHEMA_VERSION
        record["speedup"] = self.speedup
        return record

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def __str__(self) -> str:
        return "\n\n".join([self._summary_table(), self._block_table(), *self._top_tables(), *self.notes])

    def _repr_pretty_(self, printer, cycle):  # IPython / notebooks
        printer.text(str(self))

    def _summary_table(self) -> str:
        ceiling = self.ceilings.get("matmul_tflops")
        header = (f"{self.model}, mode={self.mode}, {self.device} {self.dtype}, backend={self.backend!r}; "
                  f"matmul ceiling {ceiling:.3g} TFLOP/s ({self.ceilings.get('matmul_dtype')})" if ceiling else "")
        rows = []
        for v in self.variants:
            t = v.step_time_s
            rows.append([v.name, f"{t['median'] * 1e3:.3f}", f"{t['p20'] * 1e3:.3f}-{t['p80'] * 1e3:.3f}",
                         _number(v.tokens_per_s), f"{v.flops_per_step / 1e9:.3g}", f"{v.achieved_tflops:.3g}",
                         fraction_text(v.mfu), _bytes(v.peak_memory_bytes),
                         f"{100 * v.ours_share:.0f}%"])
        table = tabulate(rows, headers=["variant", "step ms", "p20-p80 ms", "tokens/s", "GFLOP/step", "TFLOP/s",
                                        "MFU", "peak mem", "in our ops"], tablefmt="simple")
        speedup = f"\nspeedup (eager / swapped step time): {self.speedup:.2f}x" if self.speedup else ""
        wrong = any(v.mfu is not None and exceeds_ceiling(v.mfu) for v in self.variants)
        return f"{header}\n{table}{speedup}" + (f"\n{WRONG_CEILING_NOTE}" if wrong else "")

    def _block_table(self) -> str:
        rows = []
        for block in BLOCKS:
            row = [BLOCK_LABELS[block]]
            for v in self.variants:
                entry = v.blocks[block]
                row.append(f"{entry['seconds'] * 1e3:.3f} ms  {100 * entry['share']:5.1f}%")
            rows.append(row)
        unit = "kernel time" if self.device == "cuda" else "op time"
        return tabulate(rows, headers=[f"block ({unit} per step)", *[v.name for v in self.variants]],
                        tablefmt="simple")

    def _top_tables(self) -> list[str]:
        tables = []
        for v in self.variants:
            rows = [[_shorten(r["name"]), f"{r['seconds'] * 1e3:.3f}", f"{100 * r['share']:.1f}%", r["calls"],
                     BLOCK_LABELS[r["block"]].split(" ")[0], "yes" if r["ours"] else ""] for r in v.top]
            what = "kernels" if self.device == "cuda" else "ops"
            tables.append(f"top {what}, {v.name}:\n" + tabulate(
                rows, headers=["name", "ms/step", "share", "calls/step", "block", "ours"], tablefmt="simple"))
        return tables


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.1f} MiB"


def _shorten(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."
