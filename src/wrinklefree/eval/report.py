"""The before / after report of a training run: perplexity per domain, ratios to the teacher,
greedy samples and how degenerate they are, as one dict per model and one printed table.

``wf train`` evaluates the teacher and the converted student before training and the trained
student after (``train/run.py``), on the same fixed windows per domain (``asv``: held-out ASV,
``english``: general news English never trained on; ``data.heldout.domain_windows``). The ratio
student / teacher per domain is the number that says how much of the teacher a student kept;
ASV alone rewards learning the Bible's style.

Greedy loops are measured on many held-out prompts per domain (the opening tokens of chunks of the
evaluation windows, decoded as one batch), not on the few readable sample prompts: on four
24-token samples rep-4 moves by ~0.3 between seeds of one recipe, which is noise.
"""

from __future__ import annotations

from typing import Any

import torch

from wrinklefree.eval.degeneration import degeneration
from wrinklefree.eval.perplexity import perplexity
from wrinklefree.export.size import format_storage
from wrinklefree.generate import generate_batch

ROWS = ("teacher", "converted", "reconstructed", "trained")
NO_TEACHER = ("teacher not evaluated (training.eval_before=false, model.teacher=null or a resumed "
              "run): no ratios to the teacher")


@torch.no_grad()
def greedy_ids(model, tokenizer, prompt: str, new_tokens: int,
               repetition_penalty: float = 1.0) -> list[int]:
    """The ids of a greedy continuation of ``prompt`` (prompt excluded), at most ``new_tokens``
    (cut after the first end-of-sequence token)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    out = generate_batch(model, ids, max_new_tokens=new_tokens, eos_token_id=tokenizer.eos_token_id,
                         repetition_penalty=repetition_penalty)[0].tolist()  # (T,)
    return out[: out.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in out else out


def held_out_prompts(windows: torch.Tensor, count: int = 32, length: int = 12) -> torch.Tensor:
    """(N, L) evaluation windows -> (count, length) prompts: the first ``length`` tokens of each
    of ``count`` equal chunks of the windows' text, read in order. The count does not grow with
    the windows: 64 test windows cost no more generation than 8 (8 x 128 tokens give exactly the
    prompts of earlier reports, 4 per window)."""
    flat = windows.reshape(-1)  # (N·L,)
    count = min(count, flat.numel() // length)
    chunk = flat.numel() // count
    return flat[: chunk * count].view(count, chunk)[:, :length]


@torch.no_grad()
def held_out_degeneration(model, windows: torch.Tensor, new_tokens: int,
                          repetition_penalty: float = 1.0) -> dict[str, float]:
    """Mean rep-4 and distinct-2 of greedy continuations of :func:`held_out_prompts` (one
    batch, ``new_tokens`` each)."""
    prompts = held_out_prompts(windows).to(next(model.parameters()).device)
    return degeneration(generate_batch(model, prompts, max_new_tokens=new_tokens,
                                       repetition_penalty=repetition_penalty).tolist())


def evaluate_model(model, tokenizer, windows: dict[str, torch.Tensor], prompts: list[str],
                   new_tokens: int, repetition_penalty: float = 1.0,
                   validation: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Perplexity on every domain's test windows, greedy samples of ``prompts`` to read, how
    degenerate greedy decoding is on every domain's held-out prompts, and (given ``validation``
    windows) perplexity on the validation split, the number recipes are chosen on.

    ``perplexity`` stays the ASV number (what reports before two domains held), ``domains`` has
    all of them, ``validation`` the same on validation windows;
    ``degeneration`` is ``{domain: {rep4, distinct2}}`` of plain greedy decoding and
    ``rep4`` / ``distinct2`` their means over the domains; ``sample`` is the first prompt's
    continuation. With a ``repetition_penalty`` != 1 the samples are decoded with it, and
    ``degeneration_penalized`` / ``rep4_penalized`` measure the same prompts with it: the loops
    of the model itself stay in ``degeneration``.
    """
    domains = {name: perplexity(model, w) for name, w in windows.items()}
    checked = {name: perplexity(model, w) for name, w in (validation or {}).items()}
    samples = []
    for prompt in prompts:
        ids = greedy_ids(model, tokenizer, prompt, new_tokens, repetition_penalty)
        samples.append({"prompt": prompt, "text": tokenizer.decode(ids, skip_special_tokens=True),
                        **degeneration([ids])})
    result: dict[str, Any] = {"perplexity": domains.get("asv", next(iter(domains.values()))),
                              "domains": domains, "samples": samples,
                              "repetition_penalty": repetition_penalty}
    if checked:
        result["validation"] = checked
    if new_tokens > 0:
        result.update(_loops(model, windows, new_tokens, 1.0, suffix=""))
        if repetition_penalty != 1.0:
            result.update(_loops(model, windows, new_tokens, repetition_penalty,
                                 suffix="_penalized"))
    if samples:
        result["sample"] = samples[0]["text"]
    return result


def _loops(model, windows: dict[str, torch.Tensor], new_tokens: int, repetition_penalty: float,
           suffix: str) -> dict[str, Any]:
    """``degeneration<suffix>`` per domain and its ``rep4<suffix>`` / ``distinct2<suffix>``
    means over the domains."""
    loops = {name: held_out_degeneration(model, w, new_tokens, repetition_penalty)
             for name, w in windows.items()}
    means = {key + suffix: sum(d[key] for d in loops.values()) / len(loops)
             for key in ("rep4", "distinct2")}
    return {"degeneration" + suffix: loops, **means}


def ratios_to_teacher(report: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """``{row: {domain: ppl / teacher ppl}}`` for the student rows, or None without a teacher."""
    teacher = report.get("teacher", {}).get("domains")
    if not teacher:
        return None
    return {row: {d: report[row]["domains"][d] / teacher[d] for d in teacher
                  if d in report[row].get("domains", {})}
            for row in ROWS[1:] if row in report}


def format_report(report: dict[str, Any]) -> str:
    """A compact table (teacher / converted / trained x ppl per domain, ratios, rep-4 per domain
    on held-out prompts, distinct-2, rep-4 under the repetition penalty when one is set), then
    the student's storage (bits per decoder-linear weight stored and exported, GGUF sizes by
    part), and the samples: what ``wf train`` prints at the end."""
    rows = [r for r in ROWS if r in report and "domains" in report[r]]
    if not rows:
        return "no evaluation ran (training.eval_before=false and no training steps)"
    domains = list(report[rows[0]]["domains"])
    ratios = ratios_to_teacher(report) or {}
    penalty = report[rows[0]].get("repetition_penalty", 1.0)
    penalized = [f"rep-4 θ={penalty:g}"] if penalty != 1.0 else []
    header = ["model", *[f"{d} ppl" for d in domains], *[f"{d} /teacher" for d in domains],
              *[f"{d} rep-4" for d in domains], "distinct-2", *penalized]
    table = [header]
    for row in rows:
        r = report[row]
        ratio = dict.fromkeys(domains, 1.0) if row == "teacher" else ratios.get(row, {})
        table.append([row, *[_num(r["domains"].get(d)) for d in domains],
                      *[_num(ratio.get(d)) for d in domains],
                      *[_num(r.get("degeneration", {}).get(d, {}).get("rep4"), 2)
                        for d in domains], _num(r.get("distinct2"), 2),
                      *[_num(r.get("rep4_penalized"), 2) for _ in penalized]])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                       for i, (v, w) in enumerate(zip(line, widths, strict=True)))
             for line in table]
    lines.insert(1, "-" * len(lines[0]))
    if "windows" in report:
        test = report["windows"]["test"]
        lines.append("perplexity on the test windows: " + ", ".join(
            f"{d} {n} x {length} tokens" for d, (n, length) in test.items()))
    if "teacher" not in report:
        lines.append(NO_TEACHER)
    if report.get("storage"):
        lines.extend(f"student {line}" if i == 0 else line
                     for i, line in enumerate(format_storage(report["storage"]).splitlines()))
    if report.get("seconds"):
        lines.append("time: " + ", ".join(f"{phase} {_duration(t)}"
                                          for phase, t in report["seconds"].items()))
    if penalized:
        lines.append(f"rep-4: greedy on held-out prompts; {penalized[0]}: the same with the "
                     f"repetition penalty {penalty:g} (training.sample_repetition_penalty)")
    lines.append("greedy samples" + (f" (repetition penalty {penalty:g}):" if penalized else ":"))
    label = max(len(row) for row in rows)
    for row in rows:
        for s in report[row].get("samples", []):
            lines.append(f"  {row:<{label}} {s['prompt']!r} -> {s['text']!r}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """'42 s' or '9 min 08 s'."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _num(value: float | None, decimals: int | None = None) -> str:
    """A table cell: '-' for missing, fixed decimals, or 4 significant digits (1.2e+07)."""
    if value is None:
        return "-"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:.4g}" if abs(value) >= 1e5 else f"{value:.2f}"
