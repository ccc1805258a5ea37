#!/usr/bin/env bash
# Install (if needed) and run the demo: convert the embedded SmolLM2-135M to BitNet b1.58, rebuild
# it layer by layer from its full-precision copy, distil it on ASV + teacher-sampled text (~20 min
# on 2 CPU cores), report perplexities on both domains and samples, then export it for llama.cpp
# (runs/demo.gguf + runs/demo.lora.gguf; `wf generate runs/demo.gguf` runs it). Extra arguments
# are Hydra overrides, e.g. `./scripts/demo.sh training.max_steps=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# a rerun replaces the previous demo run (runs/demo); `resume=auto` continues it instead
.venv/bin/wf train training=demo overwrite=true "$@"
# ship it: the GGUF llama.cpp runs (the types the run rounded to) and its LoRA adapter (the LRC)
.venv/bin/wf export runs/demo runs/demo.gguf --overwrite
