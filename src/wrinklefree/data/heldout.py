"""The fixed train / held-out split of the embedded ASV text, and held-out evaluation windows.

The split is by document, deterministic (every ``HELDOUT_EVERY``-th document is held out), so
every model, run and machine evaluates on exactly the same text.

Two evaluation *domains* (:func:`domain_windows`): ``asv``, the held-out ASV split (the style the
demo trains on), and ``english``, general news English that no training mixture may use
(``assets.english_documents``). A student that only learned the Bible's style scores well on the
first and badly on the second; reporting both is what keeps a recipe honest.

Each domain's held-out documents are split again, by document, into *validation* text (every
``VALIDATION_EVERY``-th document: what training validates on, the influence probe, and what
recipes are chosen on) and *test* text (the rest: what reports print). Disjoint by construction,
so a recipe tuned on validation numbers is still scored on text nothing was tuned on.
"""

from __future__ import annotations

import torch

from wrinklefree import assets
from wrinklefree.errors import UserInputError

HELDOUT_EVERY = 25  # 4 % of the ASV: ~39k tokens, >= 64 x 128-token test windows after validation
VALIDATION_EVERY = 4  # of a domain's held-out documents, every 4th is validation, the rest test
SPLITS = ("validation", "test")
REPORT_WINDOWS = 64  # test windows per domain that reports score (x 128 tokens: ~8k tokens each)


class TextTooShortError(UserInputError):
    """A text without one whole window of the asked length; the caller names the setting (the
    window length of ``wf train`` or ``wf eval``) and its fix."""


def asv_split() -> tuple[list[str], list[str]]:
    """(train documents, held-out documents) of the ASV text."""
    docs = assets.asv_documents()
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def token_windows(
    tokenizer, documents: list[str], seq_len: int, num_windows: int | None = None
) -> torch.Tensor:
    """Concatenate documents (EOS between them) and cut into contiguous windows, (N, seq_len)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if num_windows is not None and len(ids) >= num_windows * seq_len:
            break
    n = len(ids) // seq_len if num_windows is None else min(num_windows, len(ids) // seq_len)
    if n == 0:
        raise TextTooShortError(f"not enough text for one window of {seq_len} tokens (the text "
                                f"has {len(ids)})")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def heldout_windows(tokenizer, seq_len: int = 256, num_windows: int = 16,
                    split: str = "test") -> torch.Tensor:
    """The first ``num_windows`` windows of ``seq_len`` tokens of the held-out ASV ``split``,
    (N, seq_len)."""
    return token_windows(tokenizer, domain_documents("asv", split), seq_len, num_windows)


DOMAINS = ("asv", "english")


def split_documents(documents: list[str], split: str) -> list[str]:
    """The ``split`` part of held-out ``documents``: every ``VALIDATION_EVERY``-th document is
    validation text, the others test text; the two never share a document."""
    if split not in SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; choose one of {SPLITS}")
    validation = split == "validation"
    return [d for i, d in enumerate(documents)
            if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) == validation]


def domain_documents(domain: str, split: str = "test") -> list[str]:
    """The ``split`` documents of ``domain``: of the held-out ASV, or of all 300 English news
    articles (none of them is ever trained on, so all are held out)."""
    if domain == "asv":
        held_out = asv_split()[1]
    elif domain == "english":
        held_out = list(assets.english_documents())
    else:
        raise ValueError(f"unknown evaluation domain {domain!r}; choose one of {DOMAINS}")
    return split_documents(held_out, split)


def domain_windows(
    tokenizer, seq_len: int = 128, num_windows: int = REPORT_WINDOWS,
    domains: tuple[str, ...] = DOMAINS, split: str = "test",
) -> dict[str, torch.Tensor]:
    """Fixed evaluation windows per domain: ``{"asv": (N, L), "english": (N, L)}``, contiguous
    text of the ``split`` documents from the first on, EOS between documents. The ``asv``
    windows equal :func:`heldout_windows` of the same split."""
    return {d: token_windows(tokenizer, domain_documents(d, split), seq_len, num_windows)
            for d in domains}


def calibration_batches(
    tokenizer, num_batches: int = 4, batch_size: int = 2, seq_len: int = 256
) -> list[dict[str, torch.Tensor]]:
    """Model inputs from the *training* side of the split, for SubLN / LRC calibration."""
    windows = token_windows(tokenizer, asv_split()[0], seq_len, num_batches * batch_size)
    return [{"input_ids": w} for w in windows.split(batch_size)]
