#!/usr/bin/env bash
# Installs everything nearsight needs into ./.venv on a fresh machine (idempotent).
# torch/torchvision are pinned here only because this machine keeps those exact builds on local disk;
# pyproject.toml asks for ranges so users get the build that fits their own CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q --upgrade pip
  $PY -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
$PY -m pip install -q -e ".[test,bench,ray,fast]"

# Browser tests drive Debian's chromium (never a downloaded browser).
if [ "${NEARSIGHT_NO_BROWSER:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
