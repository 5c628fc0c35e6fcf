"""Compiles every csrc/cuda/*.cu with nvcc for each target architecture (sm_80, sm_90 by default) against torch's
headers, without linking, and prints each kernel's registers, shared memory and spills from ptxas.

Runs on machines without a GPU or a CUDA build of torch (CI): the one generated header such builds lack is stubbed on
this check's include path only. The cuBLASLt path (csrc/cuda/linear_cublaslt.cu, KERNELS_WITH_CUBLASLT) needs the
cuBLAS headers, found as the build finds them (csrc/find_cublaslt.py: $KERNELS_CUBLAS_HOME, CUDA_HOME, the
nvidia-cublas wheel); without them that file fails the check with a message saying so (CI downloads them: .ci/run).
Exits non-zero on any compile error, or with --no-spills when a kernel spills.

    python csrc/compile_check.py [--arch 80 --arch 90] [--no-spills] [files...]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

from torch.utils.cpp_extension import CUDA_HOME, include_paths

from find_cublaslt import find_cublaslt

HERE = os.path.dirname(os.path.abspath(__file__))
CUBLASLT_SOURCE = os.path.join(HERE, "cuda", "linear_cublaslt.cu")

_FUNCTION = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+a?)'")
_USAGE = re.compile(r"Used (?P<regs>\d+) registers")
_SPILL = re.compile(r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


def _nvcc() -> str:
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("compile check: nvcc not found (set NVCC=/path/to/nvcc)")


def _compile(nvcc: str, source: str, arch: str, out_dir: str, cublas_include: str | None) -> tuple[str, str, int, str]:
    if cublas_include is None and os.path.samefile(source, CUBLASLT_SOURCE):
        return source, arch, 1, ("cuBLAS headers (cublasLt.h) not found: set KERNELS_CUBLAS_HOME to a folder with "
                                 "include/cublasLt.h (e.g. the include/ of the nvidia-cublas wheel), or install it")
    includes = [os.path.join(HERE, "compile_check_stub"), os.path.join(HERE, "include"),
                *include_paths(), sysconfig.get_paths()["include"]]
    # With the headers, every file compiles as the build does: with KERNELS_WITH_CUBLASLT (linear.cu calls the path).
    cublas = [] if cublas_include is None else ["-DKERNELS_WITH_CUBLASLT", f"-I{cublas_include}"]
    command = [nvcc, "-c", source, "-o", os.path.join(out_dir, f"{os.path.basename(source)}.{arch}.o"),
               f"-gencode=arch=compute_{arch},code=sm_{arch}", "-std=c++17", "-O3", "--use_fast_math",
               "--expt-relaxed-constexpr", "-Xptxas", "-v", "-DKERNELS_WITH_CUDA", "-D_GLIBCXX_USE_CXX11_ABI=1",
               "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
               "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
               *cublas, *[f"-I{path}" for path in includes]]
    process = subprocess.run(command, capture_output=True, text=True)
    return source, arch, process.returncode, process.stdout + process.stderr


def _report(log: str) -> list[tuple[str, str, int, int, int, int]]:
    """(kernel, arch, registers, smem bytes, spill stores, spill loads) per entry function in ptxas's output."""
    rows, current = [], None
    for line in log.splitlines():
        if match := _FUNCTION.search(line):
            current = [match["name"], match["arch"], 0, 0, 0, 0]
            rows.append(current)
        elif current is not None:
            if match := _SPILL.search(line):
                current[4], current[5] = int(match["stores"]), int(match["loads"])
            if match := _USAGE.search(line):
                current[2] = int(match["regs"])
            if match := _SMEM.search(line):
                current[3] = int(match["smem"])
    return [tuple(r) for r in rows]


def _demangle(names: list[str]) -> list[str]:
    try:
        process = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return process.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="default: every csrc/cuda/*.cu")
    parser.add_argument("--arch", action="append", help="compute capability digits, e.g. 80, 90, 90a")
    parser.add_argument("--no-spills", action="store_true", help="fail when any kernel spills registers")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sources = args.files or sorted(glob.glob(os.path.join(HERE, "cuda", "*.cu")))
    arches = args.arch or ["80", "90"]
    if not sources:
        print("compile check: no .cu files")
        return 0
    nvcc = _nvcc()
    found = find_cublaslt(CUDA_HOME, need_library=False)
    cublas_include = None if found is None else found.include_dir
    print(f"compile check: cuBLAS headers {'from ' + found.origin if found else 'NOT FOUND'}")
    failures, spills = 0, 0
    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: _compile(nvcc, job[0], job[1], out_dir, cublas_include),
                                [(s, a) for s in sources for a in arches]))
    print(f"{'kernel':70} {'arch':7} {'regs':>5} {'smem B':>7} {'spill st/ld B':>14}")
    for source, arch, code, log in results:
        name = os.path.relpath(source, os.path.dirname(HERE))
        if code != 0:
            failures += 1
            print(f"FAILED {name} for sm_{arch}:\n{log}")
            continue
        rows = _report(log)
        print(f"-- {name} (sm_{arch}): {len(rows)} kernel(s)")
        for (kernel, karch, regs, smem, stores, loads), pretty in zip(rows, _demangle([r[0] for r in rows])):
            full = re.sub(r"^void |kernels::|\(anonymous namespace\)::", "", pretty)
            short = re.sub(r"\((\w+)\)(\d+)", r"\1 \2", full).split("(")[0]  # template args like (MaskKind)2 kept
            spills += stores + loads > 0
            flag = f"  SPILLS: {full}" if stores + loads else ""  # the whole name: which instantiation
            print(f"{short[:70]:70} {karch:7} {regs:5d} {smem:7d} {stores:6d}/{loads:<6d}{flag}")
    print(f"compile check: {len(results) - failures} of {len(results)} compilations passed; "
          f"{spills} kernel(s) spill registers")
    if failures or (args.no_spills and spills):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
