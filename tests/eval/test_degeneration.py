"""Repeated n-gram rate (seq-rep-n) and distinct-2 against hand-counted values."""

from __future__ import annotations

import pytest

from wrinklefree.eval.degeneration import degeneration, distinct_n, ngrams, repeated_ngram_rate


def test_ngrams_in_order():
    assert ngrams([1, 2, 3, 4], 3) == [(1, 2, 3), (2, 3, 4)]
    assert ngrams([1, 2], 3) == []
    with pytest.raises(ValueError, match="n=0"):
        ngrams([1], 0)


def test_a_loop_by_hand():
    # "a b a b a b": 4-grams abab, baba, abab -> 3 grams, 2 unique: rep-4 = 1 - 2/3 = 1/3
    loop = [1, 2, 1, 2, 1, 2]
    assert repeated_ngram_rate(loop, 4) == pytest.approx(1 / 3)
    # bigrams ab, ba, ab, ba, ab -> 5 grams, 2 unique: distinct-2 = 2/5
    assert distinct_n(loop, 2) == pytest.approx(2 / 5)
    # 3-grams aba, bab, aba, bab -> rep-3 = 1 - 2/4
    assert repeated_ngram_rate(loop, 3) == pytest.approx(0.5)


def test_no_repetition_and_short_samples():
    assert repeated_ngram_rate([1, 2, 3, 4, 5, 6], 4) == 0.0
    assert distinct_n([1, 2, 3, 4, 5, 6], 2) == 1.0
    assert repeated_ngram_rate([1, 1, 1], 4) == 0.0  # no 4-gram at all
    assert distinct_n([7], 2) == 1.0
    # one token repeated: 4-grams (7,7,7,7) x 3 -> rep-4 = 1 - 1/3; bigrams (7,7) x 5 -> 1/5
    assert repeated_ngram_rate([7] * 6, 4) == pytest.approx(2 / 3)
    assert distinct_n([7] * 6, 2) == pytest.approx(1 / 5)


def test_mean_over_samples():
    got = degeneration([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5, 6]])
    assert got == {"rep4": pytest.approx((1 / 3 + 0) / 2), "distinct2": pytest.approx(0.7)}
    with pytest.raises(ValueError, match="at least one sample"):
        degeneration([])
