"""Evaluate several models on one task and print one table: what ``wf eval`` runs.

Models are loaded one at a time (a run folder means its ``final/`` model). For the likelihood
tasks every model is scored on windows cut from the same text; models that share a tokenizer
get identical windows (the ``windows`` column is a fingerprint of the token ids), so their
numbers compare exactly.
"""

from __future__ import annotations

import gc
import hashlib
import math
from pathlib import Path

from wrinklefree.data.heldout import DOMAINS, REPORT_WINDOWS, domain_windows
from wrinklefree.eval.elbo import masked_elbo
from wrinklefree.eval.perplexity import (
    eval_windows,
    mean_nll,
    require_windows,
    seq_len_named,
    windows_per_batch,
)
from wrinklefree.generate import load_for_generation, mask_token_id_of
from wrinklefree.models import check_context

TASKS = ("perplexity", "elbo", "classification", "summarization")

COLUMNS = {
    "perplexity": ("model", "windows", "tokens", "nll", "perplexity"),
    "elbo": ("model", "kind", "windows", "tokens", "nll", "bits_per_token", "perplexity"),
    "classification": ("model", "data", "steps", "final_loss", "eval_examples", "accuracy"),
    "summarization": ("model", "data", "steps", "eval_examples", "rouge1", "rouge2", "rougeL",
                      "rougeLsum"),
}


def likelihood(
    src: str,
    *,
    elbo: bool = False,
    seq_len: int = 128,
    num_windows: int = REPORT_WINDOWS,
    text: str | Path | None = None,
    domain: str = "asv",
    batch_size: int | None = None,
    num_samples: int = 16,
    eps: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Clean next-token NLL of ``src`` (nats/token) on one domain's windows (``asv``,
    ``english``, or ``text`` when a file is given); with ``elbo`` a DLM student (one with a
    ``config.mask_token_id``) reports its masked-diffusion ELBO bound instead.

    ``perplexity`` is exp(nll): the true perplexity for AR models, an upper bound for DLMs.
    """
    domains = ("text",) if text is not None else (domain,)
    return likelihood_rows(src, domains, elbo=elbo, seq_len=seq_len, num_windows=num_windows,
                           text=text, batch_size=batch_size, num_samples=num_samples, eps=eps,
                           seed=seed, progress=progress)[0]


def likelihood_rows(
    src: str,
    domains: tuple[str, ...] | list[str] = DOMAINS,
    *,
    elbo: bool = False,
    seq_len: int = 128,
    num_windows: int = REPORT_WINDOWS,
    text: str | Path | None = None,
    batch_size: int | None = None,
    num_samples: int = 16,
    eps: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """One :func:`likelihood` row per domain, loading the model once. Domain ``text`` means the
    file ``text``; the others are :data:`~wrinklefree.data.heldout.DOMAINS`."""
    batch_size = batch_size or windows_per_batch(seq_len)
    model, tokenizer = load_for_generation(src)
    check_context(model, seq_len, f"--seq-len of {src}", "pass a smaller --seq-len")
    mask_id = mask_token_id_of(model)
    rows = []
    for domain in domains:
        if domain == "text":
            windows = eval_windows(tokenizer, seq_len, num_windows, text)
        else:
            with seq_len_named(seq_len):
                windows = domain_windows(tokenizer, seq_len, num_windows, (domain,))[domain]
            require_windows(windows, num_windows, seq_len)
        if elbo and mask_id is not None:
            kind = "dlm-elbo"
            nll = masked_elbo(model, windows, mask_id, num_samples=num_samples, eps=eps,
                              batch_size=batch_size, seed=seed, progress=progress)
        else:
            kind = "ar"
            nll = mean_nll(model, windows, batch_size, progress)
        fingerprint = hashlib.sha1(windows.numpy().tobytes()).hexdigest()[:10]
        rows.append({"model": src, "domain": domain, "kind": kind, "windows": fingerprint,
                     "tokens": windows.shape[0] * (windows.shape[1] - 1), "nll": nll,
                     "bits_per_token": nll / math.log(2), "perplexity": math.exp(nll)})
    return rows


def evaluate_models(sources: list[str], task: str, *, domains: tuple[str, ...] | None = None,
                    reference: str | None = None, **options) -> list[dict]:
    """One result row per model for ``task`` (see :data:`TASKS`); ``options`` go to
    :func:`likelihood_rows`, :func:`~wrinklefree.eval.classification.run_classification` or
    :func:`~wrinklefree.eval.summarization.run_summarization`.

    Likelihood tasks give one row per model and domain (``domains``; default ``asv``, or
    ``text`` with a ``text`` file). With ``reference`` (the full-precision teacher) that model
    is scored first and every row gets ``ratio``: its perplexity / the reference's on the same
    domain, the number that says how much of the teacher a student kept.
    """
    from wrinklefree.eval.classification import run_classification
    from wrinklefree.eval.summarization import run_summarization

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if task not in ("perplexity", "elbo") and (domains or reference):
        raise ValueError(f"--domain / --reference apply to perplexity and elbo, not {task!r}")
    rows = []
    if task in ("perplexity", "elbo"):
        if domains is None:
            domains = ("text",) if options.get("text") is not None else ("asv",)
        models = list(sources)
        if reference and reference not in models:
            models.insert(0, reference)
        for src in models:
            rows.extend(likelihood_rows(src, domains, elbo=task == "elbo", **options))
            gc.collect()  # the previous model's weights before the next one loads
        if reference:
            add_ratios(rows, reference)
        return rows
    for src in sources:
        if task == "classification":
            rows.append(run_classification(src, **options))
        else:
            rows.append(run_summarization(src, **options))
        gc.collect()
    return rows


def add_ratios(rows: list[dict], reference: str) -> None:
    """Set ``ratio`` = perplexity / the reference model's perplexity on the same domain."""
    base = {r["domain"]: r["perplexity"] for r in rows if r["model"] == reference}
    for row in rows:
        row["ratio"] = row["perplexity"] / base[row["domain"]]


def likelihood_columns(task: str, rows: list[dict]) -> tuple[str, ...]:
    """The table columns of a likelihood task: ``domain`` unless every row scored one text
    file, ``ratio`` when a reference was given."""
    columns = list(COLUMNS[task])
    if any(r.get("domain") != "text" for r in rows):
        columns.insert(1, "domain")
    if any("ratio" in r for r in rows):
        columns.append("ratio")
    return tuple(columns)


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as an aligned text table; floats with 4 significant decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) >= 1e5 or abs(value) < 1e-3 else f"{value:.4f}"
        return "-" if value is None else str(value)

    table = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w)
                       in enumerate(zip(r, widths, strict=True))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mismatched_windows(rows: list[dict]) -> bool:
    """True when models were scored on different token windows of one domain (different
    tokenizers): their per-token numbers then do not compare."""
    by_domain: dict[str, set[str]] = {}
    for row in rows:
        if "windows" in row:
            by_domain.setdefault(row.get("domain", ""), set()).add(row["windows"])
    return any(len(fingerprints) > 1 for fingerprints in by_domain.values())
