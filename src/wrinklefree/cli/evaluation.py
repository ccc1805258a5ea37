"""``wf eval``: perplexity, diffusion ELBO and task fine-tuning of one or more models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wrinklefree.cli.common import EMBEDDED_HELP, at_least


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    from wrinklefree.eval.compare import (
        COLUMNS,
        evaluate_models,
        format_table,
        likelihood_columns,
        mismatched_windows,
    )

    common = {"batch_size": args.batch_size, "seed": args.seed, "progress": sys.stderr.isatty()}
    if args.task in ("perplexity", "elbo"):
        options = {"seq_len": args.seq_len, "num_windows": args.windows, "text": args.text,
                   "domains": _eval_domains(args), "reference": args.reference}
        if args.task == "elbo":
            options |= {"num_samples": args.samples, "eps": args.eps}
    else:
        if args.task == "classification":
            if args.train is None:
                raise ValueError("--task classification needs --train (a .jsonl file or glue/sst2, "
                                 "glue/qnli, glue/mnli)")
            options = {"train": args.train, "evaluation": args.eval, "max_length": args.max_length}
        else:
            if args.eval is None and args.train is None:
                raise ValueError("--task summarization needs --eval (a .jsonl file with "
                                 "article/summary, or cnn_dailymail)")
            options = {"evaluation": args.eval or args.train, "train": args.train,
                       "max_new_tokens": args.max_new_tokens}
        options |= {"steps": args.steps, "lr": args.lr, "limit_train": args.limit_train,
                    "limit_eval": args.limit_eval}
    options = {k: v for k, v in {**common, **options}.items() if v is not None}  # None: default
    rows = evaluate_models(args.models, args.task, **options)
    likelihood_task = args.task in ("perplexity", "elbo")
    print(format_table(rows, likelihood_columns(args.task, rows) if likelihood_task
                       else COLUMNS[args.task]))
    if mismatched_windows(rows):
        print("note: the models tokenize the text differently (windows differ); per-token "
              "numbers compare only within one tokenizer", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "options": options,
                                               "results": rows}, indent=2, default=str))


def _eval_domains(args: argparse.Namespace) -> tuple[str, ...]:
    """``--domain`` as a tuple of domains; ``--text FILE`` is its own single domain."""
    from wrinklefree.data.heldout import DOMAINS

    if args.text is not None:
        if args.domain is not None:
            raise ValueError(f"--domain {args.domain} and --text {args.text} exclude each other: "
                             "--text scores only that file")
        return ("text",)
    return DOMAINS if args.domain in (None, "all") else (args.domain,)


def eval_parser(sub) -> None:
    """The ``wf eval`` arguments."""
    p = sub.add_parser(
        "eval", help="perplexity, diffusion ELBO, task fine-tuning (classification, summarization)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate one or more models and print one table (see docs/eval.md).\n\n"
        "tasks:\n"
        "  perplexity      clean next-token perplexity on identical held-out windows\n"
        "  elbo            DLM students: masked-diffusion ELBO; AR models: NLL\n"
        "  classification  fine-tune with a new head (--train/--eval: jsonl, or glue/sst2,\n"
        "                  glue/qnli, glue/mnli), report accuracy\n"
        "  summarization   optional fine-tuning, greedy summaries, ROUGE\n"
        "                  (jsonl with article/summary, or cnn_dailymail)\n\n"
        "examples:\n"
        "  wf eval smollm2 converted/ runs/demo --task perplexity --windows 64\n"
        "  wf eval runs/demo --reference smollm2 --domain all   # ratios to the teacher\n"
        "  wf eval runs/dlm smollm2 --task elbo --samples 16\n"
        "  wf eval runs/demo --task classification --train train.jsonl --eval dev.jsonl")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=f"models: run folders, {EMBEDDED_HELP}")
    p.add_argument("--task", choices=["perplexity", "elbo", "classification", "summarization"],
                   default="perplexity")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--batch-size", type=at_least(1),
                   help="perplexity / elbo: windows per forward (default: 2048 tokens' worth, "
                   "16 x 128); classification 8, summarization 4 by default")
    p.add_argument("--seed", type=int, default=0, help="masks (elbo), head init and data order")
    g = p.add_argument_group("perplexity / elbo")
    g.add_argument("--seq-len", type=at_least(2), default=128,
                   help="tokens per window (default 128)")
    g.add_argument("--windows", type=at_least(1), default=64,
                   help="test windows per domain (default 64)")
    g.add_argument("--text", metavar="FILE",
                   help="UTF-8 text file (documents split on blank lines) instead of the domains")
    g.add_argument("--domain", choices=["asv", "english", "all"],
                   help="held-out ASV, general English (news, never trained on) or both "
                   "(default: all)")
    g.add_argument("--reference", metavar="MODEL",
                   help="the full-precision teacher (e.g. smollm2): adds a ratio column, "
                   "perplexity / the reference's on the same domain")
    g.add_argument("--samples", type=at_least(1), default=16,
                   help="elbo: mask rates per window (default 16)")
    g.add_argument("--eps", type=float, default=1e-3, help="elbo: smallest mask rate (1e-3)")
    g = p.add_argument_group("classification / summarization")
    g.add_argument("--train", metavar="DATA", help="training data: .jsonl or a hub task name")
    g.add_argument("--eval", metavar="DATA", help="evaluation data (default: the hub task's "
                   "validation split)")
    g.add_argument("--steps", type=int,
                   help="fine-tuning steps (default 200 classification, 0 summarization)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-5)")
    g.add_argument("--limit-train", type=int, metavar="N", help="use the first N examples")
    g.add_argument("--limit-eval", type=int, metavar="N", help="use the first N examples")
    g.add_argument("--max-length", type=int, help="classification: tokens per text (default 256)")
    g.add_argument("--max-new-tokens", type=at_least(1),
                   help="summarization: summary tokens (default 64)")
    p.set_defaults(func=cmd_eval)
