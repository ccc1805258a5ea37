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

from wrinklefree.eval.elbo import masked_elbo
from wrinklefree.eval.perplexity import eval_windows, mean_nll
from wrinklefree.generate import load_for_generation, mask_token_id_of

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
    seq_len: int = 256,
    num_windows: int = 16,
    text: str | Path | None = None,
    batch_size: int = 4,
    num_samples: int = 16,
    eps: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Clean next-token NLL of ``src`` (nats/token); with ``elbo`` a DLM student (one with a
    ``config.mask_token_id``) reports its masked-diffusion ELBO bound instead.

    ``perplexity`` is exp(nll): the true perplexity for AR models, an upper bound for DLMs.
    """
    model, tokenizer = load_for_generation(src)
    windows = eval_windows(tokenizer, seq_len, num_windows, text)
    mask_id = mask_token_id_of(model)
    if elbo and mask_id is not None:
        kind = "dlm-elbo"
        nll = masked_elbo(model, windows, mask_id, num_samples=num_samples, eps=eps,
                          batch_size=batch_size, seed=seed, progress=progress)
    else:
        kind = "ar"
        nll = mean_nll(model, windows, batch_size, progress)
    fingerprint = hashlib.sha1(windows.numpy().tobytes()).hexdigest()[:10]
    return {"model": src, "kind": kind, "windows": fingerprint,
            "tokens": windows.shape[0] * (windows.shape[1] - 1), "nll": nll,
            "bits_per_token": nll / math.log(2), "perplexity": math.exp(nll)}


def evaluate_models(sources: list[str], task: str, **options) -> list[dict]:
    """One result row per model for ``task`` (see :data:`TASKS`); ``options`` go to
    :func:`likelihood`, :func:`~wrinklefree.eval.classification.run_classification` or
    :func:`~wrinklefree.eval.summarization.run_summarization`."""
    from wrinklefree.eval.classification import run_classification
    from wrinklefree.eval.summarization import run_summarization

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    rows = []
    for src in sources:
        if task in ("perplexity", "elbo"):
            rows.append(likelihood(src, elbo=task == "elbo", **options))
        elif task == "classification":
            rows.append(run_classification(src, **options))
        else:
            rows.append(run_summarization(src, **options))
        gc.collect()  # the previous model's weights before the next one loads
    return rows


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
    """True when the models were scored on different token windows (different tokenizers):
    their per-token numbers then do not compare."""
    return len({row["windows"] for row in rows if "windows" in row}) > 1
