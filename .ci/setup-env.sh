# Sourced by tests/run.sh and benchmarks/run.sh: picks the Python, installs what is missing, builds the extension.
# Sets PY. Choices, in order:
#   KERNELS_PYTHON=/path/to/python   use that interpreter as it is (nothing installed)
#   a python3 whose torch sees a CUDA GPU (e.g. a GPU machine with no network): used as it is
#   otherwise: the virtual environment .venv, created and filled from .ci/requirements.txt on first use
# The extension is (re)built with `pip install --no-build-isolation --no-deps -e .` when kernels/_C is missing or
# older than a file under csrc/ or setup.py.

_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$_root"

if [ -n "${KERNELS_PYTHON:-}" ]; then
  PY=$KERNELS_PYTHON
elif python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  PY=python3
else
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
  fi
  PY=$_root/.venv/bin/python
  if ! "$PY" -c 'import torch, triton, pytest, pytest_benchmark, tabulate, matplotlib, ninja, transformers, hypothesis, rich, tqdm' 2>/dev/null; then
    echo "setup: installing .ci/requirements.txt into .venv" >&2
    # (the local package mirror's harmless "Location ... is ignored" warnings are filtered out)
    "$PY" -m pip install -q torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither" || true; }
    "$PY" -m pip install -q -r .ci/requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
  fi
fi

_so=$(ls kernels/_C*.so 2>/dev/null | head -n 1 || true)
if [ -z "$_so" ] || [ -n "$(find csrc setup.py -newer "$_so" -type f 2>/dev/null | head -n 1)" ]; then
  echo "setup: building the extension (pip install --no-build-isolation --no-deps -e .)" >&2
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . || { echo "setup: the build failed" >&2; return 1; }
fi
"$PY" -c 'import kernels; print("setup: kernels._C", kernels.extension_status())' >&2
