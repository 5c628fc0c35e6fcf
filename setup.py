"""Builds the extension ``kernels._C``.

C++ CPU kernels and the ops' C++ autograd (csrc/ops.cpp, csrc/cpu/*.cpp, csrc/autograd/*.cpp) are always built.
CUDA kernels (csrc/cuda/*.cu) are built when nvcc and a CUDA build of torch are both present.

Environment switches:
  KERNELS_CUDA=auto|1|0   build CUDA kernels when possible (default), always (fail if impossible), or never
  TORCH_CUDA_ARCH_LIST    target architectures, default "8.0;9.0+PTX" (sm_80 and sm_90 code, and sm_90 PTX that
                          GPUs newer than sm_90 compile when loading)
  MAX_JOBS                parallel compile jobs (ninja), default: the number of cores
  KERNELS_PORTABLE=1      do not tune the CPU code for the build machine (-march=native off)
  KERNELS_SANITIZE        e.g. "address,undefined": the C++ CPU kernels built with those sanitizers (-g, frame
                          pointers kept, -fno-sanitize-recover so any report aborts the process); CUDA stays off.
                          Load it with the sanitizer runtime preloaded: tests/sanitize.sh does all of it in a copy.
  KERNELS_CUBLAS_HOME     a folder with include/cublasLt.h and lib/libcublasLt.so*, tried before CUDA_HOME and the
                          nvidia-cublas wheel (csrc/find_cublaslt.py). Without cuBLASLt the CUDA build leaves out its
                          epilogue path (csrc/cuda/linear_cublaslt.cu) and kernels._C.with_cublaslt is False.
"""

import glob
import os
import platform
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
from find_cublaslt import find_cublaslt  # noqa: E402  (csrc/find_cublaslt.py, shared with csrc/compile_check.py)


_SANITIZERS = ("address", "undefined")


def _sanitizers() -> list[str]:
    """The sanitizers named by KERNELS_SANITIZE (comma-separated), validated; [] when unset."""
    names = [name.strip() for name in os.environ.get("KERNELS_SANITIZE", "").split(",") if name.strip()]
    unknown = [name for name in names if name not in _SANITIZERS]
    if unknown:
        raise ValueError(f"KERNELS_SANITIZE: unknown sanitizer(s) {unknown}; expected a comma-separated subset of "
                         f"{list(_SANITIZERS)}")
    return names


def _build_cuda() -> bool:
    if _sanitizers():
        return False  # sanitized builds check the CPU kernels; host-side ASan and the CUDA runtime do not mix
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
    sanitizers = _sanitizers()
    if sanitizers:
        # The optimisation level of the normal build, so the same vectorised loops run (at -O1 the scalar loops round
        # differently and tight fp32 tests fail for that alone); -g and frame pointers for readable stacks; no
        # recovery, so a report fails the run instead of scrolling past.
        flags += ["-g", "-fno-omit-frame-pointer", f"-fsanitize={','.join(sanitizers)}", "-fno-sanitize-recover=all"]
    return flags


def _link_flags() -> list[str]:
    sanitizers = _sanitizers()
    return ["-fopenmp"] + ([f"-fsanitize={','.join(sanitizers)}"] if sanitizers else [])


def _extension():
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/autograd/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx = _cxx_flags()
    if not _build_cuda():
        return CppExtension(
            "kernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=_link_flags(),
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    defines = ["-DKERNELS_WITH_CUDA"]
    link = _link_flags()
    cublaslt = find_cublaslt(CUDA_HOME)
    if cublaslt is None:
        print("setup: cuBLASLt not found (no cublasLt.h + libcublasLt.so* in $KERNELS_CUBLAS_HOME, CUDA_HOME or the "
              "nvidia-cublas wheel): building WITHOUT the cuBLASLt epilogue path (kernels._C.with_cublaslt = False)")
        sources.remove("csrc/cuda/linear_cublaslt.cu")
    else:
        print(f"setup: cuBLASLt from {cublaslt.origin}: include {cublaslt.include_dir}, "
              f"library -l{cublaslt.library} in {cublaslt.library_dir}")
        include_dirs.append(cublaslt.include_dir)
        defines.append("-DKERNELS_WITH_CUBLASLT")
        link += cublaslt.link_args()
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", *defines]
    return CUDAExtension(
        "kernels._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc},
        extra_link_args=link,
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
