"""Packed windows: fixed-length token windows holding several documents, EOS between them.

Position ids restart at 0 on the token after each EOS (and at the start of every window). Called
with ``position_ids`` and ``attention_mask=None``, transformers builds a document-aware causal mask
from them, so no token attends across a document boundary: a packed window gives the same logits
as running each document alone (tested in ``tests/data/test_packing.py``).
"""

from __future__ import annotations

import numpy as np
import torch


def eos_id(tokenizer) -> int:
    """The tokenizer's EOS id; packing cannot mark document ends without one."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token; packing needs one to separate "
            "documents (set tokenizer.eos_token, e.g. '<|endoftext|>')"
        )
    return int(eos)


def packed_position_ids(input_ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Position of each token inside its document, (..., L) -> (..., L)."""
    length = input_ids.shape[-1]
    idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    after_eos = torch.zeros_like(input_ids, dtype=torch.bool)
    after_eos[..., 1:] = input_ids[..., :-1] == eos  # token t starts a document if t-1 is EOS
    doc_start = torch.where(after_eos, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - doc_start


def make_window(tokens: np.ndarray | torch.Tensor, eos: int) -> dict[str, torch.Tensor]:
    """One training example from ``L`` packed tokens: input_ids = labels (the CE objective shifts
    them itself), position_ids restarting per document. All (L,) long."""
    input_ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    return {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "position_ids": packed_position_ids(input_ids, eos),
    }


def collate(windows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack windows into a batch: every (L,) tensor becomes (B, L)."""
    if not windows:
        raise ValueError("collate got an empty list of windows")
    return {key: torch.stack([w[key] for w in windows]) for key in windows[0]}
