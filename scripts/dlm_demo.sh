#!/usr/bin/env bash
# The diffusion-student demo: train `training=dlm_demo` (convert SmolLM2-135M with the demo's
# full-precision layers and reconstruction, then CE + KD warm-up, DLM ramp, TCS), then benchmark
# AR vs block-diffusion decoding of the trained student (`wf bench dlm`: tokens per forward,
# decode tok/s, teacher perplexity, masked ELBO, PNG).
# Extra arguments are Hydra overrides for the training, e.g. `training.max_steps=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
run_dir=runs/dlm_demo
# a rerun replaces the previous run (overwrite=true); pass resume=auto to continue it instead
.venv/bin/wf train training=dlm_demo run_dir="$run_dir" overwrite=true "$@"
.venv/bin/wf bench dlm --student "$run_dir" --out "$run_dir/bench-dlm"
