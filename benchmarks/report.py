"""Human-readable views of a run: the terminal table, a Markdown table and matplotlib plots."""

from __future__ import annotations

import os
from collections import defaultdict

from tabulate import tabulate

from .ceilings import WRONG_CEILING_NOTE, Ceilings, exceeds_ceiling, fraction_text
from .runner import Result

HEADERS = ["op", "mode", "shape", "dtype", "provider", "time ms", "throughput", "of ceiling", "vs best peer",
           "cold start ms"]


def _throughput(result: Result) -> str:
    if result.tflops is not None:
        return f"{result.tflops:.3g} TFLOP/s"
    if result.gbs is not None:
        return f"{result.gbs:.4g} GB/s"
    return "-"


def rows(results: list[Result]) -> list[list[str]]:
    table = []
    for r in results:
        if r.status != "ok":
            continue
        versus = f"{r.ratio_to_best_peer:.2f}x {r.best_peer}" if r.ratio_to_best_peer is not None else "-"
        fraction = fraction_text(r.fraction_of_ceiling)
        cold = f"{r.cold_start_ms:.4g}" if r.cold_start_ms is not None else "-"
        table.append([r.op, r.mode, r.shape, r.dtype, r.provider, f"{r.median_ms:.4g}", _throughput(r), fraction,
                      versus, cold])
    return table


def skipped(results: list[Result]) -> list[str]:
    """One line per provider that did not run, with its reason (each distinct reason once)."""
    seen, lines = set(), []
    for r in results:
        if r.status == "ok" or (r.provider, r.reason) in seen:
            continue
        seen.add((r.provider, r.reason))
        lines.append(f"{r.op}/{r.provider} {r.status}: {r.reason}")
    return lines


def ceilings_line(ceilings: Ceilings, env: dict) -> str:
    threads = env["threads"] if ceilings.threads is None else ceilings.threads
    return (f"{env['device_name']} ({threads} threads): copy bandwidth {ceilings.bandwidth_gbs:.4g} GB/s, "
            f"{ceilings.matmul_dtype} matmul {ceilings.matmul_tflops:.4g} TFLOP/s ({ceilings.statistic} of the "
            f"calls, n = {ceilings.matmul_size}); torch {env['torch']}, triton {env['triton']}, "
            f"commit {(env['git_commit'] or '?')[:12]}")


def wrong_ceiling_note(results: list[Result]) -> str | None:
    """The warning to print under a table where some result claims more than 100% of a ceiling, else None."""
    over = [r for r in results if r.status == "ok" and exceeds_ceiling(r.fraction_of_ceiling)]
    if not over:
        return None
    worst = max(over, key=lambda r: r.fraction_of_ceiling)
    return (f"{WRONG_CEILING_NOTE}. {len(over)} result(s), up to {100 * worst.fraction_of_ceiling:.0f}% "
            f"({worst.op} {worst.mode} {worst.shape} {worst.provider}).")


def terminal_table(results: list[Result]) -> str:
    """The table, and under it the wrong-ceiling warning when some fraction is above 100%."""
    table = tabulate(rows(results), headers=HEADERS, tablefmt="simple")
    note = wrong_ceiling_note(results)
    return f"{table}\n{note}" if note else table


def write_markdown(out_dir: str, results: list[Result], ceilings: Ceilings, env: dict) -> str:
    path = os.path.join(out_dir, "table.md")
    with open(path, "w") as handle:
        handle.write(f"# Benchmark record\n\n{ceilings_line(ceilings, env)}\n\n")
        handle.write("Time is the median; throughput TFLOP/s for compute-bound ops (fraction of the measured matmul "
                     "rate), GB/s for memory-bound ops (fraction of the measured copy bandwidth); 'vs best peer' is "
                     "the best peer's time over this provider's (> 1: faster than every peer); 'cold start' is the "
                     "setup and first call of the case (JIT compilation and autotuning included where the process "
                     "meets the kernel first).\n\n")
        handle.write(tabulate(rows(results), headers=HEADERS, tablefmt="github"))
        handle.write("\n")
        note = wrong_ceiling_note(results)
        if note:
            handle.write(f"\n**{note}**\n")
        lines = skipped(results)
        if lines:
            handle.write("\nNot run:\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    return path


def write_plots(out_dir: str, results: list[Result]) -> list[str]:
    """One PNG per op and mode: throughput per shape, one bar per provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        if r.status == "ok":
            groups[(r.op, r.mode)].append(r)
    paths = []
    for (op, mode), group in groups.items():
        shapes = list(dict.fromkeys(r.shape for r in group))
        providers = list(dict.fromkeys(r.provider for r in group))
        # One metric per plot, the first that every result of the group has: TFLOP/s, GB/s, else milliseconds per
        # call (the overhead calls and generation have neither a FLOP nor a byte count).
        metric, label = next((m for m in (("tflops", "TFLOP/s"), ("gbs", "GB/s"))
                              if all(getattr(r, m[0]) is not None for r in group)),
                             ("median_ms", "ms per call (lower is better)"))
        width = 0.8 / len(providers)
        # Up to 8 shapes as columns; more (the overhead calls: 28) as rows, one readable label each.
        horizontal = len(shapes) > 8
        size = (9, 1 + 0.15 * len(shapes) * max(2, len(providers))) if horizontal else (max(6, 1.6 * len(shapes)), 4)
        figure, axis = plt.subplots(figsize=size)
        for i, provider in enumerate(providers):
            values = []
            for shape in shapes:
                match = [r for r in group if r.shape == shape and r.provider == provider]
                values.append(getattr(match[0], metric) if match else 0.0)
            bars = axis.barh if horizontal else axis.bar
            bars([x + i * width for x in range(len(shapes))], values, width, label=provider)
        ticks = [x + 0.4 - width / 2 for x in range(len(shapes))]
        if horizontal:
            axis.set_yticks(ticks)
            axis.set_yticklabels(shapes, fontsize=7)
            axis.invert_yaxis()  # the first case on top
            axis.set_xlabel(label)
        else:
            axis.set_xticks(ticks)
            axis.set_xticklabels(shapes, rotation=20, ha="right", fontsize=7)
            axis.set_ylabel(label)
        axis.set_title(f"{op} {mode} ({group[0].dtype}, {group[0].device})")
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = os.path.join(out_dir, f"{op}-{mode.replace('+', '_')}.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths
