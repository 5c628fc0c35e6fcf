#!/usr/bin/env bash
# The test command (README): set-up on a fresh machine, then the whole test suite; the GPU tier runs where CUDA is.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k layer_norm -x`.
set -euo pipefail
source "$(dirname "$0")/../.ci/setup-env.sh"
exec "$PY" -m pytest tests -q "$@"
