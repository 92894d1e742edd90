#!/usr/bin/env bash
# The GPU checks of issue 12 (scripts/gpu_check.py), one command from the repo root after scripts/setup.sh:
#   scripts/gpu_check.sh [--n 1000000] [--skip-faiss] ...
# Without a CUDA device it says so in one line and exits 0. faiss-gpu comes from the `gpu` extra
# (pip install -e ".[gpu]"); without it the faiss checks are reported as skipped, the encoder checks still run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device on this machine (nvidia-smi finds none); nothing to measure"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" scripts/gpu_check.py "$@"
