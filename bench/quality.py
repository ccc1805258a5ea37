"""The recipe study: what each part of the BitNet / BitDistill recipe buys at one token budget.

    wf bench quality [--scale cpu|gpu] [--steps N] [--seeds N] [--recipes sft subln ...]
                     [--out DIR] [--fresh] [--keep-models] [--set KEY=VALUE ...]

Every recipe converts SmolLM2-135M-Instruct (embedded, offline), trains it with ``wf train`` on the
ASV text for the same number of tokens, and is scored on two domains, the held-out ASV and general
English news that no recipe trains on (the same windows for every recipe), as the ratio of the
trained student's perplexity to the full-precision teacher's: on validation windows (the
columns marked "val": choose recipes on these) and on the test windows reports print (other
documents; ``wrinklefree.data.heldout``), plus how degenerate its greedy
text is on held-out prompts of both domains (rep-4: repeated 4-grams, distinct-2, as the
``wf train`` report measures them; ``wrinklefree.eval.report``). With
``--seeds N`` every recipe runs at seeds 0..N-1 (``data.seed`` and ``training.seed``) and the
table shows mean ± sd. The
ladder is cumulative, as in BitDistill (arXiv 2510.13998, Table 1 ablations):

    sft      BitNet-SFT: plain conversion (no SubLN), quantization on from step 0, CE only
    subln    + SubLN before o_proj / down_proj (gains calibrated by least squares)
    warmup   + lambda warm-up from full precision to ternary over the first half of training
    kd       + logits distillation from the full-precision teacher (KL, T=5)
    ar       + attention-relation distillation (last layer's Q/K/V relations)
    lrc      + low-rank correction, rank 10% (SVD init of W - Q(W); arXiv 2412.07902)

and two weight-quantization variants on top of ``ar`` (the issue's "same training budget"
comparison): ``haar`` (ternary Haar-wavelet coefficients) and ``hadamard`` (online Hadamard
rotation of the o_proj / down_proj inputs, BitNet v2). Recipes outside the ladder:

    reconstruct  layer-by-layer reconstruction from the teacher (training.reconstruct, 6 epochs,
                 layer lr 3e-3), then CE + logits KD at lr 3e-4 (BRECQ arXiv 2102.05426)
    samples      + half the windows sampled from the teacher (data=demo)
    fp_layers    + the first two and the last decoder layers kept in full precision
                 (model.convert.fp_layers=[0,1,-1]): the demo of sessions 5-6
    channel      + layer 11 in full precision too and per-channel weight scales
                 (weight_quant=absmean_channel): the demo of sessions 7-10
    demo         + a low-rank correction of every ternary layer, rank 10% (lrc_rank=0.1, SVD
                 init, arXiv 2412.07902): the training=demo recipe
    repetition   + DITTO's pseudo-repetition penalty (objectives.repetition, weight 1), against
                 greedy loops (arXiv 2206.02369)

``--scale cpu`` (default) is 40 steps x 4 x 128 tokens (20,480 tokens; about 45 minutes for the
six-rung ladder on 2 CPU cores); ``--scale gpu`` is 1000 steps x 16 x 512 tokens (8.2 M tokens)
with ``trainer=single_gpu`` (bf16-mixed). A recipe seed whose ``report.json`` exists in
``--out/<recipe>/seed<N>`` is not run again (``--fresh`` reruns), so an interrupted study
resumes where it stopped. Writes
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
    "reconstruct": "layer-by-layer reconstruction + logits KD, lr 3e-4",
    "samples": "+ teacher samples",
    "fp_layers": "+ layers 0, 1, -1 full precision",
    "channel": "+ layer 11 full precision, per-channel scales",
    "demo": "+ LRC 10% (the demo recipe)",
    "repetition": "+ pseudo-repetition penalty (DITTO)",
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
    reconstruct = ["training.reconstruct.epochs=6", "training.reconstruct.lr=3e-3",
                   "training.lr=3e-4"]
    recipes = {
        "sft": ["model.convert.insert_subln=false", "objectives=ce"],
        "subln": ["objectives=ce"],
        "warmup": ["objectives=ce", warmup],
        "kd": ["objectives=logits_kd", warmup],
        "ar": ["objectives=bitdistill", warmup],
        "lrc": ["objectives=bitdistill", warmup, "model.convert.lrc_rank=0.1"],
        "haar": ["objectives=bitdistill", warmup, "model.convert.weight_quant=haar"],
        "hadamard": ["objectives=bitdistill", warmup, "model.convert.hadamard=true"],
        "reconstruct": ["objectives=logits_kd", *reconstruct],
        "samples": ["objectives=logits_kd", *reconstruct, "data=demo"],
        "fp_layers": ["objectives=logits_kd", *reconstruct, "data=demo",
                      "model.convert.fp_layers=[0,1,-1]"],
        "channel": ["objectives=logits_kd", *reconstruct, "data=demo",
                    "model.convert.fp_layers=[0,1,11,-1]",
                    "model.convert.weight_quant=absmean_channel"],
    }
    recipes["demo"] = [*recipes["channel"], "model.convert.lrc_rank=0.1"]
    recipes["repetition"] = [*recipes["demo"], "+objectives.repetition.weight=1.0"]
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(recipes)}")
    return recipes[name]


def shared_overrides(scale: str, steps: int, out: Path, name: str, seed: int = 0) -> list[str]:
    """The budget every recipe shares: steps, batch, window, learning rate, evaluation; ``seed``
    sets both the data order and the training seed (initialisation-free here, but DLM masks,
    dropout-free sampling and the window order all follow it)."""
    return [
        *SCALES[scale]["overrides"],
        f"training.max_steps={steps}",
        "training.lr=1e-3", "training.warmup_steps=5", "training.scheduler=cosine",
        # every recipe starts from the plain ASV data, no reconstruction, every layer ternary with
        # one scale per tensor and no low-rank correction (training=demo has none of these); the
        # last recipes add them back
        "data=asv", "training.reconstruct.epochs=0", "model.convert.fp_layers=[]",
        "model.convert.weight_quant=absmean", "model.convert.lrc_rank=null",
        f"training.val_every={steps}", f"training.checkpoint_every={steps}",
        "training.keep_last=1", "logging.progress_bar=false", "logging.tensorboard=false",
        f"data.seed={seed}", f"training.seed={seed}",
        f"name=quality-{name}-seed{seed}", f"run_dir={out / name / f'seed{seed}'}",
        "overwrite=true",  # a folder without report.json holds an interrupted run: start over
    ]


def run_recipe(name: str, overrides: list[str], run_dir: Path, fresh: bool,
               keep_models: bool) -> dict:
    """Train one recipe at one seed (or reuse its finished report) and summarise it."""
    from wrinklefree.train.compose import compose_train_config
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
    teacher, trained = report["teacher"]["domains"], report["trained"]["domains"]
    checked = report["trained"].get("validation", {})
    storage = report.get("storage") or {}  # wrinklefree.export.size.storage_report
    return {
        "recipe": name, "label": LABELS[name], "overrides": overrides,
        "teacher_ppl": teacher, "converted_ppl": report["converted"]["domains"],
        "trained_ppl": trained, "ratio": {d: trained[d] / teacher[d] for d in teacher},
        # what to choose recipes on: the validation windows (other documents than the test)
        "val_ratio": {d: v / report["teacher"]["validation"][d] for d, v in checked.items()},
        "rep4": report["trained"]["rep4"], "distinct2": report["trained"]["distinct2"],
        "final_train_ce": statistics.fmean(ce[-5:]) if ce else None,
        "tokens_per_s": statistics.median(speed) if speed else None,
        "wall_s": report.get("wall_s"), "samples": report["trained"]["samples"],
        "ce_curve": metrics.get("train/continue_pretrain/loss", []),
        "bits_stored": storage.get("bits_per_linear_weight", {}).get("stored"),
        "bits_exported": storage.get("bits_per_linear_weight", {}).get("exported"),
        "gguf_mb": _gguf_mb(storage),
    }


def _gguf_mb(storage: dict) -> float | None:
    """MB (1e6 bytes) of the default GGUF export: model file + LoRA adapter."""
    gguf = storage.get("gguf", {})
    if "model_file_bytes" not in gguf:
        return None
    return (gguf["model_file_bytes"] + gguf["adapter_file_bytes"]) / 1e6


def mean_sd(values: list[float | None]) -> tuple[float | None, float]:
    """Mean and sample standard deviation (0 for one value); None when nothing was measured."""
    values = [v for v in values if v is not None]
    if not values:
        return None, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> dict:
    """One row per recipe over its seeds: mean and sd of every reported number."""
    first = runs[0]
    domains = list(first["ratio"])
    row = {"recipe": first["recipe"], "label": first["label"], "seeds": len(runs),
           "overrides": first["overrides"], "runs": runs, "ce_curve": first["ce_curve"],
           "teacher_ppl": first["teacher_ppl"]}
    for d in domains:
        row[f"converted_{d}"] = mean_sd([r["converted_ppl"][d] for r in runs])
        row[f"trained_{d}"] = mean_sd([r["trained_ppl"][d] for r in runs])
        row[f"ratio_{d}"] = mean_sd([r["ratio"][d] for r in runs])
        row[f"val_ratio_{d}"] = mean_sd([r["val_ratio"].get(d) for r in runs])
    for key in ("rep4", "distinct2", "final_train_ce", "tokens_per_s", "wall_s", "bits_stored",
                "bits_exported", "gguf_mb"):
        row[key] = mean_sd([r[key] for r in runs])
    row["ratio_to_teacher"] = row["ratio_asv"][0]  # the one-domain number of earlier studies
    return row


def plot(rows: list[dict], tokens_per_step: int, out: Path) -> Path:
    """CE training curves (first seed, moving average over 5 steps) and the perplexity ratios
    to the teacher on both domains (mean, sd as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(14, 4.5))
    for row in rows:
        steps, values = zip(*row["ce_curve"], strict=True) if row["ce_curve"] else ((), ())
        smooth = [statistics.fmean(values[max(0, i - 4):i + 1]) for i in range(len(values))]
        curves.plot([s * tokens_per_step for s in steps], smooth, label=row["label"])
    curves.set(title="training cross-entropy (5-step average, first seed)", xlabel="tokens",
               ylabel="CE (nats)", yscale="log")
    curves.legend(fontsize=7)
    positions = range(len(rows))
    for offset, domain in ((-0.2, "asv"), (0.2, "english")):
        means = [row[f"ratio_{domain}"][0] for row in rows]
        sds = [row[f"ratio_{domain}"][1] for row in rows]
        bar = bars.barh([p + offset for p in positions], means, height=0.4, xerr=sds,
                        label=f"{domain} (held out)" if domain == "asv" else
                        f"{domain} (never trained on)")
        bars.bar_label(bar, fmt="%.1f", fontsize=7)
    bars.set_yticks(list(positions), [row["label"] for row in rows])
    seeds = max(row["seeds"] for row in rows)
    bars.set(title=f"perplexity / full-precision teacher (mean of {seeds} seed(s))",
             xscale="log")
    bars.legend(fontsize=7)
    bars.invert_yaxis()
    fig.tight_layout()
    path = out / "quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(value: tuple[float | None, float], fmt: str) -> str:
    """'mean ± sd' (just the mean for one seed); '-' when not measured."""
    mean, sd = value
    if mean is None:
        return "-"
    return f"{mean:{fmt}} ± {sd:{fmt}}" if sd else f"{mean:{fmt}}"


def print_table(rows: list[dict]) -> None:
    """The markdown table docs/benchmarks.md shows."""
    head = ["recipe", "converted asv", "trained asv", "trained english", "asv / teacher (val)",
            "english / teacher (val)", "asv / teacher", "english / teacher", "rep-4",
            "distinct-2", "train CE", "tok/s", "bits stored", "bits GGUF", "GGUF MB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for r in rows:
        cells = [r["label"], _cell(r["converted_asv"], ".3g"), _cell(r["trained_asv"], ".1f"),
                 _cell(r["trained_english"], ".1f"), _cell(r["val_ratio_asv"], ".2f"),
                 _cell(r["val_ratio_english"], ".2f"), _cell(r["ratio_asv"], ".2f"),
                 _cell(r["ratio_english"], ".2f"), _cell(r["rep4"], ".2f"),
                 _cell(r["distinct2"], ".2f"), _cell(r["final_train_ce"], ".3f"),
                 _cell(r["tokens_per_s"], ".1f"), _cell(r["bits_stored"], ".2f"),
                 _cell(r["bits_exported"], ".2f"), _cell(r["gguf_mb"], ".1f")]
        print("| " + " | ".join(cells) + " |")


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
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="seeds 0..N-1 per recipe (data.seed and training.seed); the table "
                        "shows mean ± sd")
    parser.add_argument("--fresh", action="store_true", help="rerun recipes already reported")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep each recipe's final model and checkpoint (~2 GB each)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra `wf train` overrides for every recipe (e.g. model.source=...)")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else SCALES[args.scale]["steps"]
    if steps < 2:
        raise ValueError(f"--steps {steps}: the study needs at least 2 steps")
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give at least 1")
    out = Path(args.out)
    from wrinklefree.train.compose import compose_train_config

    for name in args.recipes:  # a bad recipe name or override fails now, not hours in
        compose_train_config([*shared_overrides(args.scale, steps, out, name),
                              *recipe_overrides(name, steps), *args.set])
    budget = compose_train_config([*shared_overrides(args.scale, steps, out, "budget"), *args.set])
    tokens_per_step = budget.training.batch_size * budget.training.grad_accum * budget.data.seq_len
    rows = []
    for name in args.recipes:
        runs = []
        for seed in range(args.seeds):
            overrides = [*shared_overrides(args.scale, steps, out, name, seed),
                         *recipe_overrides(name, steps), *args.set]
            print(f"=== recipe {name}: {LABELS[name]}, seed {seed}", flush=True)
            runs.append(run_recipe(name, overrides, out / name / f"seed{seed}", args.fresh,
                                   args.keep_models))
        rows.append(aggregate(runs))
    png = plot(rows, tokens_per_step, out)
    summary = {"scale": args.scale, "steps": steps, "seeds": args.seeds,
               "tokens": steps * tokens_per_step, "rows": rows}
    (out / "quality.json").write_text(json.dumps(summary, indent=1))
    teacher = rows[0]["teacher_ppl"]
    print(f"budget: {steps} steps x {tokens_per_step} tokens = {steps * tokens_per_step} tokens, "
          f"{args.seeds} seed(s); teacher perplexity "
          + ", ".join(f"{d} {v:.2f}" for d, v in teacher.items()))
    print_table(rows)
    print(f"wrote {out / 'quality.json'} and {png}")
    return rows


if __name__ == "__main__":
    main()
