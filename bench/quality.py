"""The recipe study: what each part of the BitNet / BitDistill recipe buys at one token budget.

    wf bench quality [--scale cpu|gpu] [--steps N] [--recipes sft subln ...] [--out DIR]
                     [--fresh] [--keep-models] [--set KEY=VALUE ...]

Every recipe converts SmolLM2-135M-Instruct (embedded, offline), trains it with ``wf train`` on the
ASV text for the same number of tokens, and is scored by the held-out perplexity of the trained
student (the same windows for every recipe) as a ratio to the full-precision teacher's. The
ladder is cumulative, as in BitDistill (arXiv 2510.13998, Table 1 ablations):

    sft      BitNet-SFT: plain conversion (no SubLN), quantization on from step 0, CE only
    subln    + SubLN before o_proj / down_proj (gains calibrated by least squares)
    warmup   + lambda warm-up from full precision to ternary over the first half of training
    kd       + logits distillation from the full-precision teacher (KL, T=5)
    ar       + attention-relation distillation (last layer's Q/K/V relations)
    lrc      + low-rank correction, rank 10% (SVD init of W - Q(W); arXiv 2412.07902)

and two weight-quantization variants on top of ``ar`` (the issue's "same training budget"
comparison): ``haar`` (ternary Haar-wavelet coefficients) and ``hadamard`` (online Hadamard
rotation of the o_proj / down_proj inputs, BitNet v2).

``--scale cpu`` (default) is 40 steps x 4 x 128 tokens (20,480 tokens; about 45 minutes for the
six-rung ladder on 2 CPU cores); ``--scale gpu`` is 1000 steps x 16 x 512 tokens (8.2 M tokens)
with ``trainer=single_gpu`` (bf16-mixed). A recipe whose ``report.json`` exists in ``--out`` is
not run again (``--fresh`` reruns), so an interrupted study resumes where it stopped. Writes
``quality.json`` and ``quality.png`` (CE curves and ratios) to ``--out``, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

LABELS = {
    "sft": "BitNet-SFT (no SubLN, CE)",
    "subln": "+ SubLN",
    "warmup": "+ lambda warm-up",
    "kd": "+ logits KD",
    "ar": "+ attention relation",
    "lrc": "+ LRC 10%",
    "haar": "+ attention relation, Haar",
    "hadamard": "+ attention relation, Hadamard",
}
LADDER = ["sft", "subln", "warmup", "kd", "ar", "lrc"]
SCALES = {
    "cpu": {"steps": 40, "overrides": ["training.batch_size=4", "data.seq_len=128",
                                       "training.val_windows=8"]},
    "gpu": {"steps": 1000, "overrides": ["trainer=single_gpu", "training.batch_size=16",
                                         "data.seq_len=512", "training.val_windows=64"]},
}


def recipe_overrides(name: str, steps: int) -> list[str]:
    """The Hydra overrides of one recipe (on top of the shared budget)."""
    warmup = f"training.quant_lambda.warmup_steps={steps // 2}"
    recipes = {
        "sft": ["model.convert.insert_subln=false", "objectives=ce"],
        "subln": ["objectives=ce"],
        "warmup": ["objectives=ce", warmup],
        "kd": ["objectives=logits_kd", warmup],
        "ar": ["objectives=bitdistill", warmup],
        "lrc": ["objectives=bitdistill", warmup, "model.convert.lrc_rank=0.1"],
        "haar": ["objectives=bitdistill", warmup, "model.convert.weight_quant=haar"],
        "hadamard": ["objectives=bitdistill", warmup, "model.convert.hadamard=true"],
    }
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(recipes)}")
    return recipes[name]


def shared_overrides(scale: str, steps: int, out: Path, name: str) -> list[str]:
    """The budget every recipe shares: steps, batch, window, learning rate, evaluation."""
    return [
        *SCALES[scale]["overrides"],
        f"training.max_steps={steps}",
        "training.lr=1e-3", "training.warmup_steps=5", "training.scheduler=cosine",
        f"training.val_every={steps}", f"training.checkpoint_every={steps}",
        "training.keep_last=1", "logging.progress_bar=false", "logging.tensorboard=false",
        f"name=quality-{name}", f"run_dir={out / name}",
    ]


def run_recipe(name: str, overrides: list[str], run_dir: Path, fresh: bool,
               keep_models: bool) -> dict:
    """Train one recipe (or reuse its finished report) and summarise it."""
    from wrinklefree.cli import compose_train_config
    from wrinklefree.train.plot import read_metrics
    from wrinklefree.train.run import train

    report_path = run_dir / "report.json"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if not report_path.exists():
        start = time.perf_counter()
        train(compose_train_config(overrides))
        report = json.loads(report_path.read_text())
        report["wall_s"] = time.perf_counter() - start
        report_path.write_text(json.dumps(report, indent=2))
        if not keep_models:  # ~2 GB per recipe (final model + optimizer state)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            shutil.rmtree(run_dir / "final", ignore_errors=True)
    report = json.loads(report_path.read_text())
    metrics = read_metrics(run_dir)
    ce = [v for _, v in metrics.get("train/continue_pretrain/loss", [])]
    speed = [v for _, v in metrics.get("tok/s", [])]
    teacher, trained = report["teacher"]["perplexity"], report["trained"]["perplexity"]
    return {
        "recipe": name, "label": LABELS[name], "overrides": overrides,
        "teacher_ppl": teacher, "converted_ppl": report["converted"]["perplexity"],
        "trained_ppl": trained, "ratio_to_teacher": trained / teacher,
        "final_train_ce": statistics.fmean(ce[-5:]) if ce else None,
        "tokens_per_s": statistics.median(speed) if speed else None,
        "wall_s": report.get("wall_s"), "sample": report["trained"]["sample"],
        "ce_curve": metrics.get("train/continue_pretrain/loss", []),
    }


def plot(rows: list[dict], tokens_per_step: int, out: Path) -> Path:
    """CE training curves (moving average over 5 steps) and the perplexity ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(14, 4.5))
    for row in rows:
        steps, values = zip(*row["ce_curve"], strict=True) if row["ce_curve"] else ((), ())
        smooth = [statistics.fmean(values[max(0, i - 4):i + 1]) for i in range(len(values))]
        curves.plot([s * tokens_per_step for s in steps], smooth, label=row["label"])
    curves.set(title="training cross-entropy (5-step average)", xlabel="tokens",
               ylabel="CE (nats)", yscale="log")
    curves.legend(fontsize=7)
    labels = [row["label"] for row in rows]
    bars.bar_label(bars.barh(labels, [row["ratio_to_teacher"] for row in rows]), fmt="%.1f")
    bars.set(title="held-out perplexity / full-precision teacher", xscale="log")
    bars.invert_yaxis()
    fig.tight_layout()
    path = out / "quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                        help="budget preset: cpu (20k tokens) or gpu (8.2M tokens, bf16)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--recipes", nargs="+", default=LADDER, metavar="NAME",
                        help=f"recipes to run, in order (default: the ladder; any of "
                             f"{', '.join(LABELS)})")
    parser.add_argument("--out", default="runs/quality", help="folder of the recipe runs")
    parser.add_argument("--fresh", action="store_true", help="rerun recipes already reported")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep each recipe's final model and checkpoint (~2 GB each)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra `wf train` overrides for every recipe (e.g. model.source=...)")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else SCALES[args.scale]["steps"]
    if steps < 2:
        raise ValueError(f"--steps {steps}: the study needs at least 2 steps")
    out = Path(args.out)
    from wrinklefree.cli import compose_train_config

    for name in args.recipes:  # a bad recipe name or override fails now, not hours in
        compose_train_config([*shared_overrides(args.scale, steps, out, name),
                              *recipe_overrides(name, steps), *args.set])
    budget = compose_train_config([*shared_overrides(args.scale, steps, out, "budget"), *args.set])
    tokens_per_step = budget.training.batch_size * budget.training.grad_accum * budget.data.seq_len
    rows = []
    for name in args.recipes:
        overrides = [*shared_overrides(args.scale, steps, out, name),
                     *recipe_overrides(name, steps), *args.set]
        print(f"=== recipe {name}: {LABELS[name]}", flush=True)
        rows.append(run_recipe(name, overrides, out / name, args.fresh, args.keep_models))
    png = plot(rows, tokens_per_step, out)
    summary = {"scale": args.scale, "steps": steps, "tokens": steps * tokens_per_step,
               "rows": rows}
    (out / "quality.json").write_text(json.dumps(summary, indent=1))
    print(f"budget: {steps} steps x {tokens_per_step} tokens = {steps * tokens_per_step} tokens; "
          f"teacher perplexity {rows[0]['teacher_ppl']:.2f}")
    print(f"| {'recipe':32s} | {'converted':>10s} | {'trained':>9s} | {'/ teacher':>9s} "
          f"| {'train CE':>8s} | {'tok/s':>6s} |")
    print(f"|{'-' * 34}|{'-' * 12}|{'-' * 11}|{'-' * 11}|{'-' * 10}|{'-' * 8}|")
    for r in rows:
        print(f"| {r['label']:32s} | {r['converted_ppl']:10.3g} | {r['trained_ppl']:9.2f} "
              f"| {r['ratio_to_teacher']:9.2f} | {r['final_train_ce'] or float('nan'):8.3f} "
              f"| {r['tokens_per_s'] or float('nan'):6.1f} |")
    print(f"wrote {out / 'quality.json'} and {png}")
    return rows


if __name__ == "__main__":
    main()
