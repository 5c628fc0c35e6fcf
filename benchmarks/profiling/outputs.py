"""What a profile writes into its folder: ``profile.json`` (the record), ``blocks.png`` (stacked bars of the step
time per block, one bar per variant); the Chrome traces (``trace-<variant>.json``) are exported by the profiling
phase itself."""

from __future__ import annotations

import os

from .blocks import BLOCK_LABELS, BLOCKS
from .profile import Profile

BLOCK_COLOURS = {"attention": "#d62728", "norm": "#2ca02c", "feed_forward": "#1f77b4", "softmax": "#ff7f0e",
                 "other": "#9e9e9e"}


def write(profile: Profile, out_dir: str) -> dict:
    """Writes the PNG and the JSON record into ``out_dir``; records every output's path in ``profile.outputs``."""
    profile.outputs.update({f"trace-{v.name}": v.trace for v in profile.variants if v.trace})
    profile.outputs["plot"] = write_plot(profile, os.path.join(out_dir, "blocks.png"))
    profile.outputs["record"] = os.path.join(out_dir, "profile.json")
    write_record(profile, profile.outputs["record"])
    return profile.outputs


def write_record(profile: Profile, path: str) -> str:
    with open(path, "w") as handle:
        handle.write(profile.to_json())
        handle.write("\n")
    return path


def write_plot(profile: Profile, path: str) -> str:
    """One bar per variant, its height the timed median step time, split by the blocks' shares of the profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.name for v in profile.variants]
    figure, axis = plt.subplots(figsize=(2.2 + 1.4 * len(names), 4.2))
    bottoms = [0.0] * len(names)
    for block in BLOCKS:
        heights = [v.step_time_s["median"] * 1e3 * v.block_share(block) for v in profile.variants]
        axis.bar(names, heights, 0.55, bottom=bottoms, label=BLOCK_LABELS[block], color=BLOCK_COLOURS[block])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, total in enumerate(bottoms):
        axis.annotate(f"{total:.3g} ms", (x, total), ha="center", va="bottom", fontsize=8)
    axis.set_ylabel("step time (ms), split by profiled share")
    title = f"{profile.model} {profile.mode} ({profile.device}, {profile.dtype})"
    if profile.speedup:
        title += f"\nswapped {profile.speedup:.2f}x faster" if profile.speedup >= 1 else \
            f"\nswapped {1 / profile.speedup:.2f}x slower"
    axis.set_title(title, fontsize=9)
    axis.set_ylim(0, max(bottoms) * 1.15 if max(bottoms) > 0 else 1)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
