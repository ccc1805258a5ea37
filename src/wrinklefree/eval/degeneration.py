"""How degenerate a greedy sample is: repeated n-grams and distinct bigrams, on token ids.

A ternary student that lost the model loops (``the house of the house of the house ...``) long
before its perplexity says so. Two standard, tokenizer-level measures of one sample:

- ``rep-n``, the fraction of the sample's n-grams that repeat an earlier n-gram of the same
  sample: seq-rep-n of Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"
  (arXiv 1908.04319, Sec. 5.1, "seq-rep-n = 1 - |unique n-grams| / |n-grams|"). 0 = no n-gram
  repeats, close to 1 = a loop.
- ``distinct-n``, unique n-grams / n-grams: Li et al. 2016, "A Diversity-Promoting Objective
  Function for Neural Conversation Models" (arXiv 1510.03055, Sec. 4.3), here per sample.
  1 = every bigram is new.

Both are computed on token ids (no detokenisation ambiguity), so compare them between models that
share a tokenizer. A sample shorter than ``n`` tokens has no n-grams: rep-n 0, distinct-n 1.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The ``len(ids) - n + 1`` overlapping n-grams of ``ids``, in order."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def repeated_ngram_rate(ids: Sequence[int], n: int = 4) -> float:
    """Fraction of n-grams equal to an earlier n-gram of the same sample (seq-rep-n)."""
    grams = ngrams(ids, n)
    # Welleck et al. 2019, Sec. 5.1: seq-rep-n = 1 - |unique(grams)| / |grams|
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(ids: Sequence[int], n: int = 2) -> float:
    """Unique n-grams / n-grams of one sample (distinct-n)."""
    grams = ngrams(ids, n)
    # Li et al. 2016, Sec. 4.3: distinct-n = |unique(grams)| / |grams|
    return len(set(grams)) / len(grams) if grams else 1.0


def degeneration(samples: Sequence[Sequence[int]], n_rep: int = 4) -> dict[str, float]:
    """Mean rep-``n_rep`` and distinct-2 over samples (token ids): ``{"rep4", "distinct2"}``."""
    if not samples:
        raise ValueError("degeneration() needs at least one sample")
    return {
        f"rep{n_rep}": statistics.fmean(repeated_ngram_rate(s, n_rep) for s in samples),
        "distinct2": statistics.fmean(distinct_n(s, 2) for s in samples),
    }
