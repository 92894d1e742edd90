#!/usr/bin/env bash
# The test command: installs what the suite needs, then runs it (offline, seeded, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
