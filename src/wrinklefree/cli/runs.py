"""``wf train`` (Hydra presets, :mod:`wrinklefree.train.compose`), ``wf bench``, ``wf plot``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> None:
    from wrinklefree.train.compose import compose_train_config
    from wrinklefree.train.run import train

    config = compose_train_config(args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(config))
        return
    train(config)


def train_parser(sub) -> None:
    """The ``wf train`` arguments."""
    p = sub.add_parser(
        "train", help="train a converted model (Hydra config; `wf train --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with Hydra-composed configs from configs/. Choose presets with "
        "GROUP=NAME and change values with KEY=VALUE.\n\n"
        "groups: training (demo, cpu_hour, dlm_demo, dlm_self, stage1_subln,\n"
        "        stage2_pretrain, stage3_distill, dlm_distill, tcs, lrc_calibration,\n"
        "        lrc_dlm_influence), model (smollm2_local, smollm2_135m, qwen3_0.6b, ...), data\n"
        "        (asv, asv_teacher_mix, demo, hour, dlm_self, teacher_samples, local_files,\n"
        "        fineweb_edu), objectives, trainer (cpu, single_gpu, ddp, fsdp)\n\n"
        "A run ends with a table of the teacher, the converted and the trained student:\n"
        "perplexity on two domains (held-out ASV and general English, never trained on), the\n"
        "ratio to the teacher per domain, and greedy samples with their rep-4 / distinct-2\n"
        "(also in RUN_DIR/report.json; see docs/training.md).\n\n"
        "examples:\n"
        "  wf train                                   # the demo (~20 minutes on 2 cores)\n"
        "  wf train training=cpu_hour                 # its recipe for about an hour\n"
        "  wf train training=stage3_distill training.max_steps=200\n"
        "  wf train data=asv_teacher_mix              # half ASV, half the teacher's own samples\n"
        "  wf train run_dir=runs/a resume=auto        # continue after a crash\n"
        "  wf train run_dir=runs/a overwrite=true     # replace the run already in runs/a\n"
        "  wf train --print-config training=dlm_distill")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=cmd_train)


def bench_dir() -> Path:
    """The benchmark scripts (``bench/`` of the source checkout)."""
    return Path(__file__).resolve().parents[3] / "bench"


def cmd_bench(args: argparse.Namespace) -> None:
    import runpy

    available = sorted(p.stem for p in bench_dir().glob("*.py"))
    if args.name is None:
        print("benchmarks: " + ", ".join(available))
        return
    if args.name not in available:
        raise ValueError(f"unknown benchmark '{args.name}'; available: {', '.join(available)}")
    sys.argv = [f"wf bench {args.name}", *args.bench_args]
    runpy.run_path(str(bench_dir() / f"{args.name}.py"), run_name="__main__")


def bench_parser(sub) -> None:
    """The ``wf bench`` arguments."""
    p = sub.add_parser("bench", help="run a benchmark from bench/ (prints a table and JSON)",
                       description="Run bench/NAME.py; arguments after NAME go to the benchmark "
                       "(e.g. `wf bench train_speed --model smollm2`, "
                       "`wf bench inference --help`). Without NAME, list the benchmarks.")
    p.add_argument("name", nargs="?", help="benchmark name (file stem in bench/)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)


def cmd_plot(args: argparse.Namespace) -> None:
    from wrinklefree.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))


def plot_parser(sub) -> None:
    """The ``wf plot`` arguments."""
    p = sub.add_parser("plot", help="plot a run's loss curves, weights and perplexity to a PNG")
    p.add_argument("run_dir", help="a `wf train` run folder")
    p.add_argument("--out", help="output PNG (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)
