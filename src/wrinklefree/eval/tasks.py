"""Task data (local jsonl or Hugging Face datasets) and the fine-tuning loop task evals share.

BitDistill (arXiv 2510.13998) evaluates its students by fine-tuning them on downstream tasks:
sequence classification (MNLI, QNLI, SST-2) and summarization (CNN/DailyMail). A task file is a
jsonl with one example per line; the hub names below map the public datasets onto the same
columns, so everything downstream reads one format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

# name -> (hub dataset, config, train split, eval split, {our column: dataset column})
HUB_TASKS: dict[str, tuple[str, str, str, str, dict[str, str]]] = {
    "glue/sst2": ("nyu-mll/glue", "sst2", "train", "validation", {"text": "sentence"}),
    "glue/qnli": ("nyu-mll/glue", "qnli", "train", "validation",
                  {"text_a": "question", "text_b": "sentence"}),
    "glue/mnli": ("nyu-mll/glue", "mnli", "train", "validation_matched",
                  {"text_a": "premise", "text_b": "hypothesis"}),
    "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "train", "validation",
                      {"article": "article", "summary": "highlights"}),
}


def load_examples(spec: str | Path, split: str = "train", limit: int | None = None) -> list[dict]:
    """Examples from a ``.jsonl`` file or a hub task name (``glue/sst2`` ...; needs network).

    ``split`` ("train" or "eval") picks the hub split; a jsonl file is read as is. ``limit`` keeps
    the first examples only.
    """
    spec = str(spec)
    if spec in HUB_TASKS:
        return _hub_examples(spec, split, limit)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"task data {spec} is neither a .jsonl file nor one of "
                                f"{sorted(HUB_TASKS)}")
    examples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _hub_examples(name: str, split: str, limit: int | None) -> list[dict]:
    import datasets

    repo, config, train_split, eval_split, columns = HUB_TASKS[name]
    hub_split = train_split if split == "train" else eval_split
    if limit is not None:
        hub_split = f"{hub_split}[:{limit}]"
    try:
        data = datasets.load_dataset(repo, config, split=hub_split)
    except Exception as err:  # offline, hub errors: datasets raises many types
        raise ValueError(f"could not load {name} ({repo}/{config}, split {hub_split}) from the "
                         f"Hugging Face Hub: {err}. Offline, pass a local .jsonl file "
                         "instead") from err
    extra = ["label"] if "label" in data.column_names else []
    return [{ours: row[theirs] for ours, theirs in columns.items()} | {k: row[k] for k in extra}
            for row in data]


def require_columns(examples: list[dict], source: str, *alternatives: tuple[str, ...]) -> None:
    """Raise unless every example has all columns of one of ``alternatives``."""
    for number, example in enumerate(examples, 1):
        if not any(all(c in example for c in cols) for cols in alternatives):
            wanted = " or ".join("/".join(cols) for cols in alternatives)
            raise ValueError(f"{source}: example {number} has columns {sorted(example)}; "
                             f"expected {wanted}")


def random_batches(examples: list, batch_size: int, seed: int = 0) -> Iterator[list]:
    """Endless mini-batches of examples, reshuffled every epoch."""
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    size = min(batch_size, len(order))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):  # drop the ragged last batch
            yield [examples[i] for i in order[start:start + size]]


def fine_tune(
    model: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    *,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    progress: bool = False,
) -> list[float]:
    """``steps`` AdamW steps on the model's own loss (``model(**batch).loss``); returns losses.

    For converted models the BitLinear straight-through estimator makes this quantization-aware
    fine-tuning: the latent weights learn, the forward stays ternary.
    """
    from tqdm.auto import tqdm

    if steps <= 0:
        return []
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="fine-tune", disable=not progress):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def pad_batch(sequences: list[list[int]], pad_id: int, labels: list[list[int]] | None = None
              ) -> dict[str, torch.Tensor]:
    """Right-pad token lists into input_ids / attention_mask (and labels, -100 on padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        attention[row, :len(seq)] = 1
    batch = {"input_ids": ids, "attention_mask": attention}
    if labels is not None:
        target = torch.full_like(ids, -100)
        for row, lab in enumerate(labels):
            target[row, :len(lab)] = torch.tensor(lab)
        batch["labels"] = target
    return batch


def pad_id_of(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else EOS (padding is masked out anyway)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    return pad

