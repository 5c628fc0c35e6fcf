#!/usr/bin/env bash
# The GPU check, made for a 15-minute GPU window (docs: gpu.md; README "GPU check"):
#   bash benchmarks/gpu_check.sh [--stage 1|2|all] [--budget SECONDS] [--full] OUT_DIR
#   bash benchmarks/gpu_check.sh --dry-run [--stage 1|2|all] [--budget SECONDS]     # any machine: the plan
# 1. the CUDA extension: the in-place build when it is current; else the .so prebuilt on the CPU machine
#    (benchmarks/gpu_prebuild.sh, carried in build/gpu/prebuilt) when its ABI tags match this machine and it loads;
#    else a build here (ninja, all cores, sm_90 only, timed). Logged in OUT_DIR/setup.log.
# 2. the stages (benchmarks/gpu_plan.py says what they run), each within --budget seconds (default 360), writing as
#    they go into OUT_DIR (benchmarks/gpu_run.py: at most 8 files), then the summary table.
# KERNELS_NATIVE_CUDA_TRAINING=1 throughout: the native CUDA backward is opt-in until this check has passed, so the
# tests run it. Without a CUDA device everything but --dry-run stops with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

usage() { sed -n '2,4p' "$0" | sed 's/^# //' >&2; exit 2; }
stage=all budget=360 full=() dry=0 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=${2:-}; shift ;;
    --budget) budget=${2:-}; shift ;;
    --full) full=(--full) ;;
    --dry-run) dry=1 ;;
    -*) usage ;;
    *) [ -z "$out" ] && out=$1 || usage ;;
  esac
  shift
done
case "$stage" in 1|2|all) ;; *) usage ;; esac
[[ "$budget" =~ ^[0-9]+$ ]] || usage

if [ "$dry" -eq 1 ]; then
  exec "$PY" -m benchmarks.gpu_plan --stage "$stage" --budget "$budget" "${full[@]}"
fi
[ -n "$out" ] || usage
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch on this machine; only --dry-run runs without one" >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 KERNELS_NATIVE_CUDA_TRAINING=1

prebuilt=build/gpu/prebuilt
stamp=build/gpu/in-place.sources  # the source hash the in-place kernels/_C*.so was made from
sources() { "$PY" -c 'from benchmarks.gpu_prebuilt import source_hash; print(source_hash())'; }
# Loads the extension in a fresh process and runs one CUDA kernel through it.
loads() {
  "$PY" - <<'PYTHON'
import sys, torch
import kernels._C as c
if not c.with_cuda:
    sys.exit("kernels._C was built without CUDA kernels")
x = torch.randn(1000, device="cuda")
torch.testing.assert_close(torch.ops.kernels.residual_add(x, x), 2 * x)
print("kernels._C loads; its CUDA residual_add runs")
PYTHON
}

setup_extension() {
  local started here
  started=$(date +%s)
  here=$(sources)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$here" ] && loads; then
    echo "extension: the in-place build of these sources ($here)"
    return 0
  fi
  rm -f kernels/_C*.so
  if "$PY" -m benchmarks.gpu_prebuilt check "$prebuilt"; then
    cp "$prebuilt"/_C*.so kernels/
    if loads; then
      echo "$here" >"$stamp"
      echo "extension: prebuilt $(ls "$prebuilt"/_C*.so) ($(( $(date +%s) - started )) s)"
      return 0
    fi
    echo "extension: the prebuilt .so does not load here; building"
    rm -f kernels/_C*.so
  fi
  echo "extension: building (KERNELS_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=$(nproc))"
  if ! KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) "$PY" setup.py build_ext --inplace; then
    echo "gpu_check: BUILD FAILED"
    return 1
  fi
  echo "build: $(( $(date +%s) - started )) s"
  loads || return 1
  mkdir -p "$(dirname "$stamp")" && echo "$here" >"$stamp"
}

echo "== extension -> $out/setup.log"
if ! setup_extension >>"$out/setup.log" 2>&1; then
  tail -n 30 "$out/setup.log"
  echo "gpu_check: the CUDA extension is not usable (log: $out/setup.log)" >&2
  exit 1
fi
grep -E '^(extension|build|prebuilt):' "$out/setup.log" | tail -n 3

status=0
for s in $( [ "$stage" = all ] && echo 1 2 || echo "$stage" ); do
  echo "== stage $s (budget $budget s) -> $out"
  "$PY" -m benchmarks.gpu_run run --stage "$s" --budget "$budget" --out "$out" "${full[@]}" || status=1
done
"$PY" -c 'import sys; from benchmarks.gpu_run import limit_files, print_summary; limit_files(sys.argv[1]); print_summary(sys.argv[1])' "$out"
exit "$status"
