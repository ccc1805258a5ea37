"""`wf plot RUN_DIR`: loss curves, objective weights and lambda of a run as one PNG."""

from __future__ import annotations

import csv
from pathlib import Path


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as (step, value) pairs, from Lightning's CSV logs.

    Each launch of a run (the first, then every resume) writes its own ``logs/part-NN``; a later
    part replaces what earlier parts logged from its first step on (steps after the checkpoint
    a crashed run resumed from are trained again).
    """
    parts = sorted((Path(run_dir) / "logs").glob("part-*/metrics.csv"))
    if not parts:
        raise FileNotFoundError(f"no logs/part-*/metrics.csv in {run_dir}: is it a `wf train` "
                                "run folder?")
    rows: list[dict[str, str]] = []
    for path in parts:
        with path.open() as f:
            new = [r for r in csv.DictReader(f) if r.get("step") not in ("", None)]
        if new:
            first = min(int(float(r["step"])) for r in new)
            rows = [r for r in rows if int(float(r["step"])) < first] + new
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = int(float(row["step"]))
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``loss.png`` (or ``out``): losses (log scale), objective weights + lambda, val ppl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        if key == "train/loss" or (key.startswith("train/") and key.endswith("/loss")):
            axes[0].plot(steps, values, label=key.removeprefix("train/"))
        elif key.startswith("train/weight/") or key == "train/lambda":
            axes[1].plot(steps, values, label=key.removeprefix("train/"))
        elif key == "val/ppl":
            axes[2].plot(steps, values, marker="o", label=key)
    titles = ("training losses", "objective weights and lambda", "validation perplexity")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
