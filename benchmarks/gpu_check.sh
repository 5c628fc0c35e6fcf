#!/usr/bin/env bash
# The GPU tier in one command, on a CUDA machine from a fresh checkout (no network needed; gpu.md):
#   1. builds the extension with CUDA kernels (fails loudly when they were not built),
#   2. runs the GPU tier of the tests (pytest -m gpu),
#   3. runs the benchmark suite and writes record.json, results.csv, table.md and plots into one folder,
#   4. prints the short table last.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [--quick] [--full] [extra `python -m benchmarks` arguments]
#   default OUT_DIR: benchmarks/results/<device>-<date>; --quick: smoke sizes; --full: longer timing per case.
# Ends well inside 10 minutes on an H200 by default.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

out=""
bench_args=(--budget 0.2)
for arg in "$@"; do
  case "$arg" in
    --quick) bench_args=(--quick) ;;
    --full) bench_args=(--budget 1.0) ;;
    --*) bench_args+=("$arg") ;;
    *) [ -z "$out" ] && out=$arg || bench_args+=("$arg") ;;
  esac
done
slug=$("$PY" -c 'import torch, re; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))') \
  || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 1; }
out=${out:-benchmarks/results/$slug-$(date +%Y%m%d)}
mkdir -p "$out"
started=$(date +%s)

echo "== 1. build (KERNELS_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
export KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The native CUDA attention backward is opt-in until this check has passed on a GPU: the tests run it.
export KERNELS_NATIVE_CUDA_TRAINING=1
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
  tail -n 40 "$out/build.log"
  echo "gpu_check: BUILD FAILED (log: $out/build.log)" >&2
  exit 1
fi
"$PY" -c 'import kernels._C as c, sys; sys.exit(0 if c.with_cuda else 1)' \
  || { echo "gpu_check: kernels._C was built WITHOUT CUDA kernels" >&2; exit 1; }
"$PY" -c 'import kernels._C as c; print("cuBLASLt epilogue path (linear, feed_forward):",
      "built" if c.with_cublaslt else "NOT built: no cuBLAS headers/library found (see setup: lines in build.log)")'
"$PY" -m kernels | tee "$out/backends.txt"
echo "build: $(( $(date +%s) - started )) s"

echo "== 2. GPU tier of the tests"
"$PY" -m pytest tests -m gpu -q -p no:cacheprovider -o addopts="-ra" --junitxml="$out/gpu-tests.xml" 2>&1 \
  | tee "$out/gpu-tests.log" | tail -n 30
tests_status=${PIPESTATUS[0]}
echo "tests: exit $tests_status, $(( $(date +%s) - started )) s"

echo "== 3. benchmarks -> $out"
"$PY" -m benchmarks --device cuda --out "$out" "${bench_args[@]}" 2>&1 | tee "$out/benchmarks.log" | grep -E '^\[|Error' 
bench_status=${PIPESTATUS[0]}

echo "== 4. summary ($(( $(date +%s) - started )) s in all)"
grep -E "passed|failed" "$out/gpu-tests.log" | tail -n 1
[ -f "$out/record.json" ] && "$PY" -m benchmarks.summary "$out/record.json"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
