"""Helpers shared by the examples: command-line basics and the report of which kernel backend each op runs on."""

from __future__ import annotations

import argparse
import warnings

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


def backend_report(backend, device, dtype=torch.float32):
    """One line: the backend each op resolves to for ``backend`` on ``device`` (what ``"auto"`` picks here)."""
    chosen = []
    for op in OPS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                name = _backend.select(op, backend, device=torch.device(device), dtype=dtype).backend
            except Exception as error:  # noqa: BLE001  (a backend that cannot serve: say so instead)
                name = f"unavailable ({error})"
        chosen.append(f"{op}={name}")
    return f"backend {backend!r} on {device}: " + ", ".join(chosen)
