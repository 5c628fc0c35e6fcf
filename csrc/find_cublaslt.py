"""Finds the cuBLASLt header (cublasLt.h) and library (libcublasLt.so*) for the build (setup.py) and the CUDA compile
check (csrc/compile_check.py), so both look in the same places, in this order:

1. ``$KERNELS_CUBLAS_HOME`` (``include/`` and ``lib/`` or ``lib64/``): an explicit choice wins. CI points it at a
   folder holding only the headers of the ``nvidia-cublas`` wheel (enough for the compile check).
2. The CUDA toolkit (``CUDA_HOME``): ``include/`` and ``lib64/``, when the toolkit ships cuBLAS.
3. The ``nvidia-cublas`` wheel of the running Python (a CUDA build of torch depends on it):
   ``site-packages/nvidia/cu13/{include,lib}`` (CUDA 13) or ``nvidia/cublas/{include,lib}`` (CUDA 12).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Optional


@dataclass
class CublasLt:
    include_dir: str
    library_dir: Optional[str]  # None when only the headers were found (enough to compile, not to link)
    library: Optional[str]  # the linker's -l argument: "cublasLt" or ":libcublasLt.so.13"
    origin: str  # where it was found, for the build log

    def link_args(self) -> list[str]:
        """Linker arguments: the library and an rpath to its folder (the wheel's folder is not on the loader path)."""
        return [f"-L{self.library_dir}", f"-l{self.library}", f"-Wl,-rpath,{self.library_dir}"]


def _library(lib_dirs: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(folder, -l argument) of libcublasLt: the unversioned libcublasLt.so when present, else the newest
    libcublasLt.so.<major> (wheels ship only the versioned name, linked by its file name with -l:)."""
    for lib_dir in lib_dirs:
        if os.path.isfile(os.path.join(lib_dir, "libcublasLt.so")):
            return lib_dir, "cublasLt"
        versioned = [path for path in glob.glob(os.path.join(lib_dir, "libcublasLt.so.*"))
                     if re.fullmatch(r"libcublasLt\.so\.\d+", os.path.basename(path))]
        if versioned:
            newest = max(versioned, key=lambda path: int(path.rsplit(".", 1)[1]))
            return lib_dir, ":" + os.path.basename(newest)
    return None, None


def _candidates(cuda_home: Optional[str]) -> list[tuple[str, list[str], str]]:
    """(include folder, library folders, origin) in the order of the module docstring."""
    found = []
    home = os.environ.get("KERNELS_CUBLAS_HOME")
    if home:
        found.append((os.path.join(home, "include"), [os.path.join(home, "lib"), os.path.join(home, "lib64")],
                      f"KERNELS_CUBLAS_HOME={home}"))
    if cuda_home:
        found.append((os.path.join(cuda_home, "include"),
                      [os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")], f"CUDA_HOME={cuda_home}"))
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for package in ("cu13", "cublas"):
            base = os.path.join(root, package)
            found.append((os.path.join(base, "include"), [os.path.join(base, "lib")], f"the nvidia wheel ({base})"))
    return found


def find_cublaslt(cuda_home: Optional[str] = None, need_library: bool = True) -> Optional[CublasLt]:
    """The first candidate with cublasLt.h (and, when ``need_library``, libcublasLt); None when there is none."""
    for include_dir, lib_dirs, origin in _candidates(cuda_home):
        if not os.path.isfile(os.path.join(include_dir, "cublasLt.h")):
            continue
        library_dir, library = _library(lib_dirs)
        if library is None and need_library:
            continue
        return CublasLt(include_dir, library_dir, library, origin)
    return None
