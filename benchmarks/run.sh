#!/usr/bin/env bash
# The main job (README): set-up on a fresh machine, then the benchmark suite on whatever device is here
# (CUDA when present, else the CPU). Extra arguments go to `python -m benchmarks`, e.g. `--quick`, `--op attention`.
set -euo pipefail
source "$(dirname "$0")/../.ci/setup-env.sh"
exec "$PY" -m benchmarks "$@"
