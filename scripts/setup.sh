#!/usr/bin/env bash
# Setup: a venv with the pinned stack (torch/torchvision from the machine's local wheels) and rtd installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
