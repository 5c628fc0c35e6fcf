"""``python -m kernels``: what was built, the versions, and the backend table (op x backend: devices, dtypes, limits)."""

from __future__ import annotations

import platform

import torch

import kernels
from kernels._backend import backend_table


def main() -> None:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"kernels._C: {kernels.extension_status()}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}, "
          f"Python {platform.python_version()}, GPU: {cuda}")
    print()
    rows = backend_table()
    try:
        from tabulate import tabulate

        print(tabulate(rows, headers="keys", tablefmt="github"))
    except ImportError:
        for row in rows:
            print(" | ".join(row.values()))


if __name__ == "__main__":
    main()
