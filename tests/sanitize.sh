#!/usr/bin/env bash
# The native CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   bash tests/sanitize.sh            # every native CPU test (tests -k "native and not cuda", slow ones included)
#   bash tests/sanitize.sh --quick    # CI's subset: attention, layer-norm, softmax and linear native tests, no slow ones
#   bash tests/sanitize.sh --quick -x # further arguments go to pytest
#
# The working tree (tracked and untracked files, not the ignored ones) is copied to $KERNELS_SANITIZE_DIR (default
# $TMPDIR/fused-transformer-kernels-sanitize) and built there with KERNELS_SANITIZE=address,undefined (setup.py), so the
# normal build stays as it is; the copy keeps its build/ between runs, so an unchanged tree is not rebuilt.
# The Python interpreter is not instrumented, so the ASan runtime must be the first library loaded: LD_PRELOAD of the
# compiler's libasan (torch extensions need it). Any report aborts the test process (halt_on_error, and
# -fno-sanitize-recover in the build), so the run fails; the reports are also written to $KERNELS_SANITIZE_DIR/reports/
# and counted at the end ("sanitizer reports: N", 0 expected).
# Python: $KERNELS_PYTHON, else $PY, else python3 (with torch, pytest, hypothesis, ninja installed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${KERNELS_PYTHON:-${PY:-python3}}
work=${KERNELS_SANITIZE_DIR:-${TMPDIR:-/tmp}/fused-transformer-kernels-sanitize}

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi

started=$(date +%s)
say() { echo "sanitize: $1 ($(( $(date +%s) - started )) s)" >&2; }

# A fresh copy of the sources; build/ and the built extension stay, with the sources' modification times preserved,
# so setuptools rebuilds only what changed.
mkdir -p "$work"
find "$work" -mindepth 1 -maxdepth 1 ! -name build ! -name kernels ! -name reports -exec rm -rf {} +
if [ -d "$work/kernels" ]; then
  find "$work/kernels" -mindepth 1 ! -name '_C*.so' -delete 2>/dev/null || true
fi
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$work"
say "copied the tree to $work"

cd "$work"
# setuptools rebuilds when a listed source is newer than the extension, not for a header or setup.py: remove the
# extension then (ninja recompiles what changed, everything when the flags did).
so=$(ls kernels/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$so" ] && [ -n "$(find csrc setup.py -newer "$so" -type f | head -n 1)" ]; then
  rm -f "$so"
fi
KERNELS_SANITIZE=address,undefined KERNELS_CUDA=0 "$py" setup.py -q build_ext --inplace >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2; say "the sanitized build failed"; exit 1; }
say "built with -fsanitize=address,undefined"

# libstdc++ preloaded too: ASan intercepts __cxa_throw and must find the real one when it starts (torch throws C++
# exceptions for every error the tests provoke), or it aborts with "CHECK failed ... real___cxa_throw".
libasan=$(${CXX:-c++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
for lib in "$libasan" "$libstdcxx"; do
  [ -e "$lib" ] || { echo "sanitize: ${CXX:-c++} has no $lib" >&2; exit 1; }
done
rm -rf "$work/reports"
mkdir -p "$work/reports"

# detect_leaks=0: CPython and torch keep allocations until exit by design. protect_shadow_gap=0 and
# allocator_may_return_null=1: torch probes large allocations. verify_asan_link_order=0: the runtime is preloaded.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:protect_shadow_gap=0:allocator_may_return_null=1:verify_asan_link_order=0:detect_odr_violation=0:log_path=$work/reports/asan:log_exe_name=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan"

if [ "$quick" = 1 ]; then
  # The attention, layer-norm, softmax and linear native CPU cases at small shapes (~40 s of tests): without the fp64
  # gradchecks and opchecks (~2.5 min under ASan), torch.compile, the key-chunking cases and the hidden-size sweeps.
  selection=(tests/test_attention_native.py tests/test_attention_native_backward.py tests/test_layer_norm.py
             tests/test_masked_softmax.py tests/test_linear.py -m "not gpu and not slow"
             -k "native and not cuda and not gradcheck and not opcheck and not compile and not splits and not hidden")
else
  selection=(tests -m "not gpu" -k "native and not cuda")
fi

status=0
LD_PRELOAD="$libasan $libstdcxx" PYTHONPATH="$work" "$py" -m pytest "${selection[@]}" -q -p no:cacheprovider "$@" || status=$?
# One line per report: ASan's "==pid==ERROR: AddressSanitizer: ..." (or "AddressSanitizer: CHECK failed"), UBSan's
# "file:line: runtime error: ...".
reports=$(cat "$work"/reports/* 2>/dev/null | grep -cE "^(==[0-9]+==ERROR: )?AddressSanitizer:|runtime error:" || true)
say "pytest exit status $status; sanitizer reports: $reports (in $work/reports/)"
if [ "$reports" != 0 ]; then
  cat "$work"/reports/* | head -n 80 >&2
  exit 1
fi
exit "$status"
