#!/usr/bin/env bash
# Install (if needed) and run the whole test suite offline. Extra arguments go to pytest,
# e.g. `./scripts/test.sh -m "not slow"` for the fast unit tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q --durations=15 "$@"
