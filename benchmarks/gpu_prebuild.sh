#!/usr/bin/env bash
# Builds the CUDA extension here, on a machine without a GPU, for the GPU machine's stack (docs: gpu.md), so that the
# GPU window is not spent compiling: Python 3.12, torch 2.11.0 (its PyPI wheel is a CUDA 13.0 build, as the GPU
# machine's), nvcc 13.0, sm_90 only, no -march=native (KERNELS_PORTABLE=1: the GPU machine's CPU is another).
#   1. downloads the torch wheel once into a cache (pip download --no-deps) and checks that it is a CUDA 13.0 build;
#   2. installs it with its dependencies into a throwaway venv under build/gpu/ (git-ignored): `import torch` needs its
#      CUDA libraries, and its nvidia-cublas wheel is the cuBLASLt (headers and libcublasLt.so.13) the GPU machine's
#      torch loads, which setup.py finds there (csrc/find_cublaslt.py);
#   3. builds kernels._C (ninja, MAX_JOBS jobs, default 2: this machine's cores are shared), timed;
#   4. strips it and writes build/gpu/prebuilt/{_C.<tag>.so, manifest.json}: the ABI tags and what was verified
#      (python -m benchmarks.gpu_prebuilt: the op registrations, PyInit__C, the libraries it links, sm_90 cubins only,
#      the size under 40 MiB, and that it loads into the wheel's torch and runs a CPU op); then removes the venv
#      (about 5 GB) and the objects unless --keep-venv (which keeps both: a rebuild is then incremental).
# Usage: bash benchmarks/gpu_prebuild.sh [--keep-venv]
# Then carry build/gpu/prebuilt to the GPU machine with the checkout; gpu_check.sh uses it when its tags match.
set -euo pipefail
cd "$(dirname "$0")/.."

keep_venv=0
for arg in "$@"; do
  case "$arg" in
    --keep-venv) keep_venv=1 ;;
    *) echo "usage: bash benchmarks/gpu_prebuild.sh [--keep-venv]" >&2; exit 2 ;;
  esac
done

PY312=${PY312:-python3.12}  # on the CPU machine: PYENV_VERSION=3.12.1 selects pyenv's 3.12 (with Python.h)
TORCH_VERSION=2.11.0
TORCH_CUDA=13.0
wheels=${XDG_CACHE_HOME:-$HOME/.cache}/fused-transformer-kernels/wheels
work=build/gpu
venv=$work/venv
prebuilt=$work/prebuilt
started=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - started )) s)"; }

"$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' \
  || { echo "gpu_prebuild: $PY312 is not Python 3.12 (set PY312)" >&2; exit 1; }

stamp "torch $TORCH_VERSION wheel (cp312, manylinux x86_64) -> $wheels"
mkdir -p "$wheels"
wheel=$(ls "$wheels"/torch-"$TORCH_VERSION"-cp312-cp312-manylinux*_x86_64.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  "$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --index-url https://pypi.org/simple -d "$wheels" "torch==$TORCH_VERSION"
  wheel=$(ls "$wheels"/torch-"$TORCH_VERSION"-cp312-cp312-manylinux*_x86_64.whl | head -n 1)
fi
wheel_cuda=$(unzip -p "$wheel" torch/version.py | sed -n "s/^cuda[^=]*= '\([0-9.]*\)'.*/\1/p")
[ "$wheel_cuda" = "$TORCH_CUDA" ] \
  || { echo "gpu_prebuild: $wheel is a CUDA '${wheel_cuda:-none}' build, not CUDA $TORCH_CUDA" >&2; exit 1; }
echo "$(basename "$wheel"): CUDA $wheel_cuda"

stamp "throwaway venv $venv (torch and its CUDA libraries)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch; assert torch.__version__ == '$TORCH_VERSION+cu130'" 2>/dev/null; then
  rm -rf "$venv"
  "$PY312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --index-url https://pypi.org/simple "$wheel" setuptools numpy
fi
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "C++11 ABI", torch._C._GLIBCXX_USE_CXX11_ABI)'

stamp "build (KERNELS_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=${MAX_JOBS:-2}) -> $work/build.log"
rm -rf "$work/lib"  # $work/tmp stays: ninja rebuilds only what changed
# torch takes CUDA_HOME from nvcc's path (here /usr/local/bin/nvcc: /usr/local), where there is no libcudart.so: the
# linker also searches the toolkit's lib64.
cudart=$(ls "${CUDA_HOME:-/usr/local/cuda}"/lib64/libcudart.so /usr/local/cuda/lib64/libcudart.so 2>/dev/null | head -n 1)
[ -n "$cudart" ] || { echo "gpu_prebuild: no libcudart.so in \$CUDA_HOME/lib64 or /usr/local/cuda/lib64" >&2; exit 1; }
export LIBRARY_PATH=$(dirname "$cudart")${LIBRARY_PATH:+:$LIBRARY_PATH}
build_started=$(date +%s)
if ! KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 KERNELS_PORTABLE=1 MAX_JOBS=${MAX_JOBS:-2} \
    "$venv/bin/python" setup.py build_ext --build-lib "$work/lib" --build-temp "$work/tmp" >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log"
  echo "gpu_prebuild: BUILD FAILED (log: $work/build.log)" >&2
  exit 1
fi
build_seconds=$(( $(date +%s) - build_started ))
grep -E '^setup:' "$work/build.log" || true
echo "build: $build_seconds s"

stamp "strip, verify, manifest -> $prebuilt"
so=$(ls "$work"/lib/kernels/_C.cpython-312-*.so)
rm -rf "$prebuilt"
mkdir -p "$prebuilt"
strip --strip-unneeded -o "$prebuilt/$(basename "$so")" "$so"
TORCH_CUDA_ARCH_LIST=9.0 "$venv/bin/python" -m benchmarks.gpu_prebuilt write "$so" "$prebuilt/$(basename "$so")" \
  "$prebuilt" "$build_seconds"
ls -l "$prebuilt"

if [ "$keep_venv" -eq 0 ]; then
  rm -rf "$venv" "$work/tmp"
fi
stamp "done"
