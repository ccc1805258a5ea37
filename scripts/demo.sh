#!/usr/bin/env bash
# Install (if needed) and run the demo: convert the embedded SmolLM2-135M to BitNet b1.58, distil
# it from its full-precision copy on the ASV text (~10 CPU minutes), report perplexities and
# samples. Extra arguments are Hydra overrides, e.g. `./scripts/demo.sh training.max_steps=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# a rerun replaces the previous demo run (runs/demo); `resume=auto` continues it instead
.venv/bin/wf train training=demo overwrite=true "$@"
