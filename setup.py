"""Builds the extension ``kernels._C``.

C++ CPU kernels (csrc/ops.cpp, csrc/cpu/*.cpp) are always built. CUDA kernels (csrc/cuda/*.cu) are built when nvcc
and a CUDA build of torch are both present.

Environment switches:
  KERNELS_CUDA=auto|1|0   build CUDA kernels when possible (default), always (fail if impossible), or never
  TORCH_CUDA_ARCH_LIST    target architectures, default "8.0;9.0" (sm_80 and sm_90)
  MAX_JOBS                parallel compile jobs (ninja), default: the number of cores
  KERNELS_PORTABLE=1      do not tune the CPU code for the build machine (-march=native off)
"""

import glob
import os
import platform

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_cuda() -> bool:
    switch = os.environ.get("KERNELS_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if switch in ("0", "off", "no", "false"):
        return False
    if switch in ("1", "on", "yes", "true"):
        if not possible:
            raise RuntimeError(
                "KERNELS_CUDA=1 but CUDA kernels cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
            )
        return True
    if switch != "auto":
        raise ValueError(f"KERNELS_CUDA must be auto, 1 or 0, got {switch!r}")
    return possible


def _cxx_flags() -> list[str]:
    # -fno-trapping-math (as torch's own build): lets GCC if-convert selects and float->int conversions, without which
    # loops such as a polynomial exp do not vectorise.
    flags = ["-O3", "-std=c++17", "-fopenmp", "-DKERNELS_CPU_OPENMP", "-fno-trapping-math"]
    if os.environ.get("KERNELS_PORTABLE") != "1" and platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return flags


def _extension():
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx = _cxx_flags()
    if not _build_cuda():
        return CppExtension(
            "kernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", "-DKERNELS_WITH_CUDA"]
    return CUDAExtension(
        "kernels._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + ["-DKERNELS_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

setup(
    name="fused-transformer-kernels",
    version="0.1.0",
    description="Fused Triton and C++/CUDA kernels for attention, layer norm and the feed-forward block",
    packages=find_packages(include=["kernels", "kernels.*", "transformer", "transformer.*", "benchmarks", "benchmarks.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "triton>=3.2; platform_system == 'Linux'", "numpy"],
    extras_require={
        "bench": ["matplotlib", "tabulate", "pytest-benchmark"],
        "test": ["pytest", "pytest-benchmark"],
        "hf": ["transformers"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
