#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${RANFACE_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
