"""Block diffusion and self-speculation vs autoregressive decoding of one DLM student.

    wf bench dlm --student runs/dlm_demo [--teacher smollm2] [--thresholds 0.9 0.7 0.5]
                 [--prompts 4] [--prompt-len 32] [--new-tokens 64] [--block-size 32]
                 [--elbo-windows 4] [--seq-len 128] [--threads 2] [--out bench-dlm]

On the same student and the same prompts (the first ``--prompt-len`` tokens of held-out ASV
windows), greedy decoding of exactly ``--new-tokens`` tokens (EOS ignored) per row:

- ``AR``: one token per forward pass on a KV cache (``generate_ar``);
- ``self-speculation``: greedy AR's text, drafted by the noisy view and verified by the clean
  view in one forward (``generate_speculative``). The bench fails unless its tokens equal
  ``generate_ar``'s on every prompt in float64 (the lossless check); the float32 rows report how
  many leading tokens agree, because with int8 activations the rounding difference between a
  one-token and a many-token float32 forward can flip a quantized activation and, a few tokens
  later, the greedy token;
- ``block diffusion τ``: Fast-dLLM v2 decoding (``generate_block_diffusion``) at each
  confidence threshold τ, blocks of the size the student was trained with.

Columns: new tokens per forward pass (the prompt pass counts, as it yields the first token in
both decoders), decode tok/s (new tokens over the time after the prompt pass), the teacher's
perplexity of the generated continuations given their prompts (quality as the full-precision
model judges it; lower is better, but degenerate repetition also scores low, so read it with the
samples), its ratio to the AR row, and the speed-up over AR. Beside the table: the student's
masked ELBO (nats/token, an upper bound on its NLL under the block-diffusion factorisation) and
its AR perplexity on held-out windows, and the first denoising step of every held-out block per
offset (confidence, accuracy, fraction above each τ, positions committed per block:
:func:`wrinklefree.eval.parallel.block_confidence`), which says why the rows commit what they do.
Writes ``dlm.json`` and ``dlm.png`` (speed vs teacher perplexity) into ``--out``; the tables go
to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.block_diffusion import block_size_of, model_dtype
from wrinklefree.data.heldout import heldout_windows
from wrinklefree.eval.elbo import block_masked_elbo
from wrinklefree.eval.parallel import block_confidence
from wrinklefree.eval.perplexity import mean_nll
from wrinklefree.generate import (
    DecodeStats,
    generate_ar,
    generate_block_diffusion,
    load_for_generation,
    mask_token_id_of,
)
from wrinklefree.models import load_model, resolve_source
from wrinklefree.speculative import generate_speculative

DEFAULT_THRESHOLDS = (0.9, 0.7, 0.5)


def run_config(student: str) -> dict[str, Any]:
    """The trainer's resolved config of a run folder (``config.yaml``), or {}."""
    path = Path(student) / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def timed_decode(chunks: Iterable[list[int]]) -> tuple[list[int], float]:
    start = time.perf_counter()
    tokens = [t for chunk in chunks for t in chunk]
    return tokens, time.perf_counter() - start


@torch.no_grad()
def prompt_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    """Time of the prompt pass alone (what both decoders pay before their first new token)."""
    start = time.perf_counter()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


@torch.no_grad()
def continuation_nll(teacher: nn.Module, prompt: torch.Tensor, tokens: list[int]) -> float:
    """Σ -log p_teacher(continuation token | prompt and the tokens before it), nats."""
    full = torch.cat([prompt, torch.tensor([tokens], device=prompt.device)], dim=1)  # (1, P+N)
    logits = teacher(input_ids=full, use_cache=False).logits[0, prompt.shape[1] - 1 : -1]
    return float(F.cross_entropy(logits.float(), full[0, prompt.shape[1]:], reduction="sum"))


def decode_row(name: str, decode, student: nn.Module, teacher: nn.Module,
               prompts: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    """Decode every prompt with ``decode(ids, stats)``; speed, forwards and teacher quality."""
    n_tokens = calls = 0
    seconds = nll = 0.0
    samples = []
    drafts = DecodeStats()  # self-speculation's draft counts over every prompt
    for prompt in prompts.split(1):
        prompt_s = prompt_seconds(student, prompt)
        stats = DecodeStats()
        tokens, total_s = timed_decode(decode(prompt, stats))
        if len(tokens) != new_tokens:
            raise RuntimeError(f"{name}: decoded {len(tokens)} tokens, expected {new_tokens}")
        drafts.add_drafts(stats)
        n_tokens += len(tokens)
        calls += stats.model_calls + 1  # + the prompt pass, which yields the first token
        seconds += max(total_s - prompt_s, 1e-9)
        nll += continuation_nll(teacher, prompt, tokens)
        samples.append(tokens)
    return {
        "name": name,
        "tokens_per_forward": n_tokens / calls,
        "decode_tok_s": n_tokens / seconds,
        "teacher_ppl": math.exp(nll / n_tokens),
        "tokens": n_tokens,
        "forwards": calls,
        "samples": samples,
    } | ({"drafts": [{"draft": j + 1, "checked": c, "accepted": a, "rate": a / c}
                     for j, (c, a) in enumerate(zip(drafts.drafts_checked,
                                                    drafts.drafts_accepted, strict=True))]}
         if drafts.drafts_checked else {})


def measure(student: nn.Module, tokenizer, teacher: nn.Module, *, block_size: int,
            thresholds: Iterable[float] = DEFAULT_THRESHOLDS, prompts: torch.Tensor,
            new_tokens: int, elbo_windows: torch.Tensor, elbo_samples: int = 4) -> dict[str, Any]:
    """Every row plus the student's masked ELBO and AR NLL on ``elbo_windows``."""
    mask_id = mask_token_id_of(student, tokenizer)
    if mask_id is None:
        raise ValueError("the student has no mask token (config.mask_token_id): train it with "
                         "the DLM objective (model.dlm=true, e.g. training=dlm_demo)")
    thresholds = list(thresholds)
    student.eval()
    teacher.eval()
    rows = [decode_row("AR", lambda ids, stats: generate_ar(
        student, ids, max_new_tokens=new_tokens, stats=stats), student, teacher, prompts,
        new_tokens)]
    rows.append(decode_row("self-speculation", lambda ids, stats: generate_speculative(
        student, ids, mask_token_id=mask_id, max_new_tokens=new_tokens, block_size=block_size,
        stats=stats), student, teacher, prompts, new_tokens))
    rows[1]["agrees_with_ar"] = [agreeing_prefix(a, b) for a, b in
                                 zip(rows[0]["samples"], rows[1]["samples"], strict=True)]
    for tau in thresholds:
        rows.append(decode_row(f"block diffusion τ={tau:g}", lambda ids, stats, tau=tau:
                               generate_block_diffusion(
                                   student, ids, mask_token_id=mask_id, max_new_tokens=new_tokens,
                                   block_size=block_size, threshold=tau, require_dlm=False,
                                   stats=stats),
                               student, teacher, prompts, new_tokens))
    ar = rows[0]
    for row in rows:
        row["speedup"] = row["decode_tok_s"] / ar["decode_tok_s"]
        row["ppl_ratio"] = row["teacher_ppl"] / ar["teacher_ppl"]
        row["sample"] = tokenizer.decode(row.pop("samples")[0], skip_special_tokens=True)
    confidence = block_confidence(student, elbo_windows, mask_id, block_size, thresholds)
    elbo = block_masked_elbo(student, elbo_windows, mask_id, block_size,
                             num_samples=elbo_samples)
    ar_nll = mean_nll(student, elbo_windows)
    lossless = lossless_check(student, prompts, mask_id, block_size, new_tokens)
    return {
        "rows": rows,
        "lossless": lossless,
        "block_size": block_size,
        "prompts": int(prompts.shape[0]),
        "prompt_len": int(prompts.shape[1]),
        "new_tokens": new_tokens,
        "student_masked_elbo_nats": elbo,
        "student_elbo_ppl_bound": math.exp(elbo),
        "student_ar_ppl": math.exp(ar_nll),
        "elbo_windows": list(elbo_windows.shape),
        "confidence": confidence,
    }


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two decodings share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


@torch.no_grad()
def lossless_check(student: nn.Module, prompts: torch.Tensor, mask_id: int, block_size: int,
                   new_tokens: int) -> dict[str, Any]:
    """Self-speculation must give ``generate_ar``'s tokens on every prompt, checked in float64.

    Why float64: the verifier runs many tokens per forward, AR one, and float32 kernels sum in
    a shape-dependent order (~1e-7 apart); a student with int8 activations rounds some
    activation to the other integer and the logits then differ by far more than the rounding.
    In float64 that noise is ~1e-16 and the check tests the algorithm, not the kernels. The
    student is converted in place and back (float32 -> float64 -> float32 is exact).
    """
    dtype = model_dtype(student)
    student.double()
    try:
        for index, prompt in enumerate(prompts.split(1)):
            want = [t for c in generate_ar(student, prompt, max_new_tokens=new_tokens) for t in c]
            got = [t for c in generate_speculative(
                student, prompt, mask_token_id=mask_id, max_new_tokens=new_tokens,
                block_size=block_size) for t in c]
            if want != got:
                at = agreeing_prefix(want, got)
                raise RuntimeError(
                    f"self-speculation differs from greedy AR in float64 on prompt {index} at "
                    f"new token {at} ({got[at]} instead of {want[at]}): a bug in the decoder; "
                    "report it with the student")
    finally:
        student.to(dtype)
    return {"dtype": "float64", "prompts": int(prompts.shape[0]), "new_tokens": new_tokens,
            "identical": True}


def curve(run: Path) -> list[dict[str, Any]]:
    """One point per bench of ``run`` (its snapshots, final, and the starting student's run at
    0 tokens): tokens trained on, then per decoder tokens per forward and the teacher-scored
    perplexity ratio to AR, and the student's AR perplexity."""
    config = run_config(str(run))
    training, data = config["training"], config["data"]
    tokens_per_step = training["batch_size"] * training.get("grad_accum", 1) * data["seq_len"]
    start = Path(config["model"]["source"])
    benches = [(0, (start.parent if start.name == "final" else start) / "bench-dlm")]
    for snapshot in (run / "snapshots").glob("step-*"):
        benches.append((int(snapshot.name.removeprefix("step-")), snapshot / "bench-dlm"))
    benches.append((training["max_steps"], run / "bench-dlm"))
    points = []
    for step, folder in sorted(benches):
        path = folder / "dlm.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        points.append({"step": step, "tokens": step * tokens_per_step,
                       "student_ar_ppl": result["student_ar_ppl"],
                       "rows": {r["name"]: {"tokens_per_forward": r["tokens_per_forward"],
                                            "ppl_ratio": r["ppl_ratio"],
                                            "speedup": r["speedup"]}
                                | ({"drafts": r["drafts"]} if "drafts" in r else {})
                                for r in result["rows"]}})
    return points


def print_curve(run: Path) -> dict[str, Any]:
    """Print :func:`curve` as a table (tokens per forward, and ppl ratio to AR) and write
    ``RUN/dlm-curve.json``."""
    points = curve(run)
    if not points:
        raise SystemExit(f"no bench-dlm/dlm.json under {run}: run `wf bench dlm` on its "
                         "snapshots and final model first (scripts/dlm_self.sh does)")
    names = [n for n in points[-1]["rows"] if n != "AR"]
    print(f"{'step':>5} {'tokens':>9} {'AR ppl':>7} " + " ".join(f"{n:>26}" for n in names))
    for p in points:
        cells = [(f"{p['rows'][n]['tokens_per_forward']:.2f} tok/fwd, "
                  f"{p['rows'][n]['ppl_ratio']:.2f}x") if n in p["rows"] else "-"
                 for n in names]
        print(f"{p['step']:>5} {p['tokens']:>9} {p['student_ar_ppl']:>7.2f} "
              + " ".join(f"{c:>26}" for c in cells))
    (run / "dlm-curve.json").write_text(json.dumps(points, indent=2, ensure_ascii=False))
    return {"curve": points}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"block size {result['block_size']}, {result['prompts']} prompts × "
        f"{result['prompt_len']} tokens, {result['new_tokens']} new tokens each (greedy)",
        f"{'decoder':<26} {'tok/fwd':>8} {'tok/s':>8} {'speed-up':>9} {'teacher ppl':>12} "
        f"{'ppl / AR':>9}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['name']:<26} {r['tokens_per_forward']:>8.2f} {r['decode_tok_s']:>8.2f} "
                     f"{r['speedup']:>8.2f}x {r['teacher_ppl']:>12.2f} {r['ppl_ratio']:>9.2f}")
    lines.append(f"student masked ELBO {result['student_masked_elbo_nats']:.3f} nats/token "
                 f"(perplexity bound {result['student_elbo_ppl_bound']:.1f}); AR perplexity "
                 f"{result['student_ar_ppl']:.1f}")
    lossless = result["lossless"]
    agree = next(r["agrees_with_ar"] for r in result["rows"] if "agrees_with_ar" in r)
    lines.append(f"self-speculation = greedy AR token for token in {lossless['dtype']} "
                 f"({lossless['prompts']} prompts × {lossless['new_tokens']} tokens); in the "
                 f"float32 rows above the first {agree} tokens agree")
    for r in result["rows"]:
        if r.get("drafts"):
            lines.append(f"{r['name']} drafts accepted, by draft (checked when the ones before "
                         "it were accepted): " + ", ".join(
                             f"#{d['draft']} {d['rate']:.2f} of {d['checked']}"
                             for d in r["drafts"]))
    for r in result["rows"]:
        lines.append(f"  {r['name']}: {r['sample'][:100]!r}")
    return "\n".join(lines + confidence_table(result["confidence"]))


def confidence_table(confidence: dict[str, Any]) -> list[str]:
    """The first denoising step per block offset (why the rows above commit what they do)."""
    taus = list(confidence["first_step"])
    lines = [f"first denoising step of {confidence['blocks']} held-out blocks (opening token "
             "known, the rest masked), per offset in the block:",
             f"{'offset':>6} {'confidence':>11} {'accuracy':>9} "
             + " ".join(f"{'> ' + format(t, 'g'):>7}" for t in taus)]
    for row in confidence["offsets"]:
        lines.append(f"{row['offset']:>6} {row['confidence']:>11.3f} {row['accuracy']:>9.3f} "
                     + " ".join(f"{row['above'][t]:>7.3f}" for t in taus))
    lines.append("positions the first step commits per block: "
                 + ", ".join(f"τ={t:g}: {n:.2f}" for t, n in confidence["first_step"].items()))
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result["rows"]:
        ax.scatter(r["decode_tok_s"], r["teacher_ppl"], color="C1" if r["name"] == "AR" else "C0")
        ax.annotate(f"{r['name']} ({r['tokens_per_forward']:.1f} tok/fwd)",
                    (r["decode_tok_s"], r["teacher_ppl"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("decode tok/s (student)")
    ax.set_ylabel("teacher perplexity of the continuation")
    ax.set_title("block diffusion, self-speculation vs AR: speed / quality")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="wf bench dlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", help="run folder or model folder (DLM)")
    parser.add_argument("--curve", metavar="RUN", default=None,
                        help="instead of measuring: the table of RUN's snapshots/step-N and "
                        "final benches (each bench-dlm/dlm.json) against the tokens trained "
                        "on, with the starting student's bench (model.source's run) at 0")
    parser.add_argument("--teacher", default=None,
                        help="scoring model (default: the run's model.teacher, else its "
                        "model.source, else smollm2)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--block-size", type=int, default=None,
                        help="default: the block size the student trained with (its "
                        "config.json), else 32")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--elbo-windows", type=int, default=4)
    parser.add_argument("--elbo-samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="ELBO window length")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-dlm"))
    args = parser.parse_args(argv)
    if args.curve:
        return print_curve(Path(args.curve))
    if not args.student:
        parser.error("--student is required (or --curve RUN)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = run_config(args.student).get("model") or {}
    teacher_src = (args.teacher or (model_cfg.get("teacher") not in (None, "source")
                                    and model_cfg["teacher"]) or model_cfg.get("source")
                   or "smollm2")
    student, tokenizer = load_for_generation(args.student)
    block_size = args.block_size or block_size_of(student) or 32
    teacher = load_model(resolve_source(teacher_src))
    windows = heldout_windows(tokenizer, max(args.seq_len, args.prompt_len),
                              args.prompts + args.elbo_windows)
    prompts = windows[: args.prompts, : args.prompt_len]
    elbo_windows = windows[args.prompts:, : args.seq_len]
    result = measure(student, tokenizer, teacher, block_size=block_size,
                     thresholds=args.thresholds, prompts=prompts, new_tokens=args.new_tokens,
                     elbo_windows=elbo_windows, elbo_samples=args.elbo_samples)
    result.update(student=str(args.student), teacher=str(teacher_src),
                  threads=torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dlm.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    plot(result, args.out / "dlm.png")
    print(table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, ensure_ascii=False))
    print(f"wrote {args.out / 'dlm.json'} and {args.out / 'dlm.png'}")
    return result


if __name__ == "__main__":
    main()
