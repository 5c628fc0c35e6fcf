"""Helpers shared by the examples: command-line basics, timing, and the report of which kernel backend each op runs
on."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kernels
from kernels import _backend

OPS = ("layer_norm", "attention", "masked_softmax", "linear", "feed_forward")


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", default="auto", choices=("auto",) + kernels.BACKENDS,
                   help="kernel backend of the fused modules (default: auto)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def median_seconds(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` timed calls after one warm-up; on CUDA each call is timed to the
    end of its kernels (synchronised before and after)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backend_report(backend, device):
    """One line: the backend each op runs on for ``backend`` on ``device`` (for ``"auto"``, the first fast backend
    available here in the op's order; a call that backend cannot serve still falls back to torch, with a warning)."""
    device_type = torch.device(device).type
    chosen = []
    for op in OPS:
        implementations = _backend.implementations(op)
        if backend == "auto":
            order = _backend._REGISTRY[op].auto_order.get(device_type, ())
            usable = [name for name in order
                      if name in implementations and implementations[name].unavailable(device_type) is None]
            name = usable[0] if usable else "torch"
        elif backend not in implementations:
            name = f"{backend} (not implemented: torch)"
        else:
            reason = implementations[backend].unavailable(device_type)
            name = backend if reason is None else f"{backend} (unavailable: {reason})"
        chosen.append(f"{op}={name}")
    return f"backend {backend!r} on {device}: " + ", ".join(chosen)
