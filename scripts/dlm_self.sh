#!/usr/bin/env bash
# Parallel decoding on a CPU budget: train `training=dlm_self` (dlm_demo's diffusion student,
# continued on its own greedy trajectories with certainty forcing and logits KD), then benchmark
# AR, self-speculation (token-identical to AR, asserted) and threshold diffusion of the result
# (`wf bench dlm`). Runs ./scripts/dlm_demo.sh's training first when runs/dlm_demo is missing,
# and benchmarks that starting student once, for the before/after comparison.
# Extra arguments are Hydra overrides for the dlm_self training, e.g. `training.max_steps=100`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
start=runs/dlm_demo
if [ ! -f "$start/final/config.json" ]; then
  .venv/bin/wf train training=dlm_demo run_dir="$start" overwrite=true
fi
if [ ! -f "$start/bench-dlm/dlm.json" ]; then
  .venv/bin/wf bench dlm --student "$start" --out "$start/bench-dlm"
fi
run_dir=runs/dlm_self
# a rerun replaces the previous run (overwrite=true); pass resume=auto to continue it instead
.venv/bin/wf train training=dlm_self model.source="$start/final" run_dir="$run_dir" \
  overwrite=true "$@"
.venv/bin/wf bench dlm --student "$run_dir" --out "$run_dir/bench-dlm"
# the curve: tokens per forward against the tokens the DLM phase read, at every snapshot
for snapshot in "$run_dir"/snapshots/step-*; do
  .venv/bin/wf bench dlm --student "$snapshot" --out "$snapshot/bench-dlm" > "$snapshot/bench-dlm.log"
done
.venv/bin/python bench/dlm.py --curve "$run_dir"
