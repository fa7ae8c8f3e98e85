#!/usr/bin/env bash
# Create .venv (or $RANFACE_VENV) and install ranface with pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RANFACE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -r requirements.txt
# deployment extras (ONNX Runtime for export checks, faiss for large galleries, PyAV for video)
"$VENV/bin/python" -m pip install -q -r requirements-deploy.txt
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
