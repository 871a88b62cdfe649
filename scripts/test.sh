#!/usr/bin/env bash
# The test command: the default suite (unit + integration, Ray tests included; slow/gpu excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec timeout 3000 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
