"""The benchmark record of performance.md: environment, ceilings and every result, as JSON and CSV."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict

import torch

from .ceilings import Ceilings
from .runner import Result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from kernels import extension_status

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "extension": extension_status(),
    }


def device_slug(env: dict) -> str:
    """A file-name-safe name of the device, e.g. 'nvidia-h200' or 'cpu'."""
    if env["device"] != "cuda":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in env["device_name"].lower()).strip("-")


def write_record(out_dir: str, env: dict, ceilings: Ceilings, results: list[Result], argv: list[str]) -> str:
    os.makedirs(out_dir, exist_ok=True)
    record = {"environment": env, "command": argv, "ceilings": ceilings.as_dict(),
              "results": [asdict(r) for r in results]}
    path = os.path.join(out_dir, "record.json")
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as handle:
        fields = [f for f in asdict(results[0]) if f != "ratios"] if results else []
        writer = csv.DictWriter(handle, fieldnames=fields + ["ratios"])
        writer.writeheader()
        for result in results:
            row = asdict(result)
            row["ratios"] = ";".join(f"{k}={v:.3f}" for k, v in result.ratios.items())
            writer.writerow(row)
    return path


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
