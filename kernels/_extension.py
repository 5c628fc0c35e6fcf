"""Loads the C++/CUDA extension ``kernels._C`` and says, once, when it is missing or lacks CUDA kernels.

The other backends keep working without it: the registry simply reports the ``native`` backend as unavailable.
"""

from __future__ import annotations

import functools
import warnings

import torch

_C = None
_STATUS = "not loaded"

try:
    from . import _C  # noqa: F811  (the compiled module; importing it registers the C++ ops)

    if _C.with_cuda:
        _STATUS = "built with CUDA kernels"
    else:
        _STATUS = "built with CPU kernels only"
        if torch.cuda.is_available():
            warnings.warn(
                "kernels._C was built without CUDA kernels on a machine with a CUDA GPU: the 'native' backend serves "
                "CPU tensors only. Rebuild with `KERNELS_CUDA=1 pip install --no-build-isolation -e .`.",
                RuntimeWarning,
                stacklevel=2,
            )
except ImportError as error:  # the package still works on its 'torch' and 'triton' backends
    _C = None
    _STATUS = f"missing ({error})"
    warnings.warn(
        f"kernels._C could not be imported ({error}); the 'native' backend is unavailable. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def extension_status() -> str:
    """One line: whether the C++ extension is built, and with which kernels."""
    return _STATUS


def native_available(device_type: str) -> bool:
    """True when the extension has kernels for tensors on ``device_type`` ("cpu" or "cuda")."""
    if _C is None:
        return False
    return device_type == "cpu" or (device_type == "cuda" and bool(_C.with_cuda))


@functools.cache
def has_native_kernel(op_name: str, device_type: str) -> bool:
    """True when the C++ op ``kernels::<op_name>`` has a kernel registered for the device's dispatch key. Cached: the
    kernels are registered when kernels._C loads (the dispatcher query cost ~15 us per call, on every op call)."""
    if not native_available(device_type):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"kernels::{op_name}", key)
    except RuntimeError:  # the op's schema is not in this build of kernels._C (e.g. an older build)
        return False
