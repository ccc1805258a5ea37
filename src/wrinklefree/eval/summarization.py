"""Summarization: optional fine-tuning of the causal LM, greedy summaries, ROUGE.

The BitDistill setting (arXiv 2510.13998: CNN/DailyMail, ROUGE) with a plain prompt,
``Article: ...\\nSummary:``. Scores come from Google's ``rouge-score`` package (ROUGE, Lin 2004),
F-measure x 100 averaged over examples, with Porter stemming as in the usual CNN/DM setup.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from wrinklefree.eval.tasks import (
    HUB_TASKS,
    fine_tune,
    load_examples,
    pad_batch,
    pad_id_of,
    random_batches,
    require_columns,
)
from wrinklefree.generate import eos_token_ids, generate_ar, load_for_generation

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PROMPT = "Article: {article}\nSummary:"


def prompt_ids(tokenizer, article: str, max_article_tokens: int) -> list[int]:
    """Token ids of the prompt, the article cut to its first ``max_article_tokens`` tokens."""
    article_ids = tokenizer(article, add_special_tokens=False)["input_ids"][:max_article_tokens]
    return tokenizer(PROMPT.format(article=tokenizer.decode(article_ids)))["input_ids"]


def training_batch(tokenizer, examples: list[dict], max_article_tokens: int,
                   max_summary_tokens: int) -> dict[str, torch.Tensor]:
    """Prompt + " summary" + EOS, loss on the summary and EOS only (labels -100 on the prompt)."""
    sequences, labels = [], []
    for ex in examples:
        prompt = prompt_ids(tokenizer, ex["article"], max_article_tokens)
        target = tokenizer(" " + ex["summary"].strip(), add_special_tokens=False)["input_ids"]
        target = target[:max_summary_tokens] + [tokenizer.eos_token_id]
        sequences.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    return pad_batch(sequences, pad_id_of(tokenizer), labels)


def summarize(model: nn.Module, tokenizer, article: str, *, max_new_tokens: int = 64,
              max_article_tokens: int = 384) -> str:
    """Greedy summary of ``article``: up to EOS, ``max_new_tokens`` or a blank line."""
    ids = torch.tensor([prompt_ids(tokenizer, article, max_article_tokens)])
    ids = ids.to(next(model.parameters()).device)
    new = [t for chunk in generate_ar(model, ids, max_new_tokens=max_new_tokens,
                                      eos_token_id=eos_token_ids(model, tokenizer))
           for t in chunk]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return text.split("\n\n")[0].strip()


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measure x 100 per type (rougeLsum splits sentences on newlines)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references (got {len(predictions)} and "
                         f"{len(references)}), at least one")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    return {kind: 100 * total / len(predictions) for kind, total in totals.items()}


def run_summarization(
    src: str,
    evaluation: str | Path,
    train: str | Path | None = None,
    *,
    steps: int = 0,
    lr: float = 5e-5,
    batch_size: int = 4,
    max_article_tokens: int = 384,
    max_new_tokens: int = 64,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """ROUGE of ``src``'s greedy summaries on ``evaluation``, after ``steps`` of fine-tuning on
    ``train`` (0 = zero-shot). Data: jsonl with ``article`` / ``summary`` or ``cnn_dailymail``."""
    eval_set = load_examples(evaluation, "eval", limit_eval)
    require_columns(eval_set, str(evaluation), ("article", "summary"))
    model, tokenizer = load_for_generation(src)
    losses: list[float] = []
    if steps > 0:
        if train is None:
            if str(evaluation) not in HUB_TASKS:
                raise ValueError("fine-tuning (--steps > 0) needs --train FILE.jsonl")
            train = evaluation
        train_set = load_examples(train, "train", limit_train)
        require_columns(train_set, str(train), ("article", "summary"))
        torch.manual_seed(seed)
        batches = (training_batch(tokenizer, b, max_article_tokens, max_new_tokens)
                   for b in random_batches(train_set, batch_size, seed))
        losses = fine_tune(model, batches, steps, lr, progress=progress)
    predictions = [summarize(model, tokenizer, ex["article"], max_new_tokens=max_new_tokens,
                             max_article_tokens=max_article_tokens) for ex in eval_set]
    scores = rouge(predictions, [ex["summary"] for ex in eval_set])
    return {"model": src, "task": "summarization", "data": str(evaluation),
            "eval_examples": len(eval_set), "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            **scores, "samples": predictions[:3]}
