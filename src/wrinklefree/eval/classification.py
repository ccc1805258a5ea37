"""Sequence classification: fine-tune a (converted) model with a new head and report accuracy.

The BitDistill setting (arXiv 2510.13998, Table 1: MNLI, QNLI, SST-2): the decoder is
fine-tuned on the task with a linear head on the last token; a BitNet student stays ternary
while it learns (BitLinear straight-through estimator).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from wrinklefree.convert import convert_for_loading
from wrinklefree.eval.tasks import (
    HUB_TASKS,
    fine_tune,
    load_examples,
    pad_batch,
    pad_id_of,
    random_batches,
    require_columns,
)
from wrinklefree.models import load_model, load_tokenizer, resolve_source
from wrinklefree.nn.surgery import bitnet_config_of


def load_classifier(src: str, num_labels: int, pad_token_id: int) -> nn.Module:
    """A ``*ForSequenceClassification`` with the decoder of ``src`` and a new, random head.

    ``src`` is anything :func:`~wrinklefree.models.load_model` accepts, or a run folder. The
    causal model is loaded, an architecture-matched classifier is built from its config,
    converted with the same BitNet options when the source is a BitNet checkpoint (the head,
    ``score``, stays full precision), and the decoder weights are copied in.
    """
    from transformers import AutoModelForSequenceClassification

    causal = load_model(resolve_source(src))
    config = copy.deepcopy(causal.config)
    config.num_labels = num_labels
    config.pad_token_id = pad_token_id  # the head reads the last non-pad token of each row
    model = AutoModelForSequenceClassification.from_config(config)
    options = bitnet_config_of(causal)
    if options is not None:
        convert_for_loading(model, options)  # the decoder weights are copied below
    model.base_model.load_state_dict(causal.base_model.state_dict())
    dtype = next(causal.parameters()).dtype
    return model.to(dtype).eval()


def example_text(example: dict) -> str:
    """One input string: ``text``, or ``text_a`` and ``text_b`` on two lines (NLI pairs)."""
    if "text" in example:
        return example["text"]
    return f"{example['text_a']}\n{example['text_b']}"


def label_ids(train: list[dict], evaluation: list[dict]) -> dict:
    """Label value -> class id. Integer labels are their own ids (0..max); other labels are
    numbered in sorted order of the values seen in training."""
    values = [ex["label"] for ex in train + evaluation]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise ValueError(f"negative label {min(values)}: hidden test labels (GLUE test "
                             "splits) cannot be evaluated; use the validation split")
        return {i: i for i in range(max(values) + 1)}
    names = sorted({ex["label"] for ex in train}, key=str)
    unseen = sorted({ex["label"] for ex in evaluation} - set(names), key=str)
    if unseen:
        raise ValueError(f"evaluation labels {unseen} never occur in the training data {names}")
    return {name: i for i, name in enumerate(names)}


def encode(tokenizer, examples: list[dict], labels: dict, max_length: int
           ) -> dict[str, torch.Tensor]:
    """Right-padded batch with class ids ``labels`` (B,). Texts longer than ``max_length``
    tokens keep their end, which the last-token head reads (and so does an NLI hypothesis)."""
    ids = [tokenizer(example_text(ex))["input_ids"][-max_length:] for ex in examples]
    batch = pad_batch(ids, pad_id_of(tokenizer))
    batch["labels"] = torch.tensor([labels[ex["label"]] for ex in examples])
    return batch


@torch.no_grad()
def accuracy(model: nn.Module, tokenizer, examples: list[dict], labels: dict,
             max_length: int = 256, batch_size: int = 8) -> float:
    """Fraction of ``examples`` whose argmax class is the gold label."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = encode(tokenizer, examples[start:start + batch_size], labels, max_length)
        gold = batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, C)
        correct += int((logits.argmax(-1).cpu() == gold).sum())
    return correct / len(examples)


def run_classification(
    src: str,
    train: str | Path,
    evaluation: str | Path | None = None,
    *,
    steps: int = 200,
    lr: float = 5e-5,
    batch_size: int = 8,
    max_length: int = 256,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Fine-tune ``src`` with a classification head on ``train`` and return its accuracy on
    ``evaluation`` (default: the eval split of the same hub task; required for jsonl)."""
    evaluation = _eval_source(train, evaluation)
    train_set = load_examples(train, "train", limit_train)
    eval_set = load_examples(evaluation, "eval", limit_eval)
    for name, examples in ((train, train_set), (evaluation, eval_set)):
        require_columns(examples, str(name), ("text", "label"), ("text_a", "text_b", "label"))
    labels = label_ids(train_set, eval_set)
    tokenizer = load_tokenizer(resolve_source(src))
    torch.manual_seed(seed)
    model = load_classifier(src, len(labels), pad_id_of(tokenizer))
    batches = (encode(tokenizer, b, labels, max_length)
               for b in random_batches(train_set, batch_size, seed))
    losses = fine_tune(model, batches, steps, lr, progress=progress)
    return {"model": src, "task": "classification", "data": str(train),
            "train_examples": len(train_set), "eval_examples": len(eval_set),
            "num_labels": len(labels), "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "accuracy": accuracy(model, tokenizer, eval_set, labels, max_length, batch_size)}


def _eval_source(train: str | Path, evaluation: str | Path | None) -> str | Path:
    if evaluation is not None:
        return evaluation
    if str(train) in HUB_TASKS:
        return train
    raise ValueError(f"--train {train} is a local file: pass --eval FILE.jsonl as well")
