"""What every Triton launcher needs to know about where it runs."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True under the Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors, one program at a time, and
    launchers must use a fixed configuration (no autotuning) and small blocks."""
    return os.environ.get("TRITON_INTERPRET") == "1"
