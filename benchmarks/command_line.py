"""The command-line arguments the benchmark CLIs share (``python -m benchmarks`` and its ``profile`` subcommand):
the device, the dtype and the CPU thread count, and how they resolve."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def add_device_arguments(parser: argparse.ArgumentParser, dtypes=tuple(DTYPES)) -> None:
    """``--device``, ``--dtype`` (one of ``dtypes``) and ``--threads``."""
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--dtype", choices=sorted(dtypes), help="default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")


def resolve_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype] | None:
    """The device and dtype the arguments ask for (defaults: CUDA when available; bf16 there, fp32 on the CPU), with
    the thread count applied; None, after saying why on stderr, when ``--device cuda`` has no device here."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype
