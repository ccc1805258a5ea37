"""Summarization: ROUGE by hand, loss only on the summary, and fine-tune -> generate -> score."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from wrinklefree.eval.summarization import rouge, run_summarization, training_batch


def test_rouge_by_hand():
    # unigrams: 2 of 3 shared (the, cat) -> P = R = F = 2/3; bigrams: 1 of 2 (the cat) -> 1/2;
    # longest common subsequence "the cat" (2 of 3) -> 2/3. Averaged with a perfect pair.
    scores = rouge(["the cat sat", "dogs bark"], ["the cat ran", "dogs bark"])
    assert scores["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert scores["rouge2"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert scores["rougeL"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="as many predictions"):
        rouge(["a"], [])


def test_loss_only_on_summary_and_eos(word_folder):
    tokenizer = AutoTokenizer.from_pretrained(word_folder)
    batch = training_batch(tokenizer, [{"article": "the dog barked", "summary": "dog barked"}],
                           max_article_tokens=8, max_summary_tokens=8)
    labels = batch["labels"][0].tolist()
    ids = batch["input_ids"][0].tolist()
    # prompt "Article : the dog barked Summary :" = 7 word tokens (no newline token), ignored
    assert labels[:7] == [-100] * 7
    assert tokenizer.decode(labels[7:9]) == "dog barked"
    assert labels[9] == tokenizer.eos_token_id
    assert ids[7:10] == labels[7:10] and len(ids) == 10  # the targets are the input's tail


def test_fine_tuning_learns_the_summaries(word_folder, tmp_path):
    # every summary is "the sheep ran .": after fine-tuning the greedy summary is exactly that
    rows = [{"article": f"the {w} was in the field", "summary": "the sheep ran ."}
            for w in ("dog", "river", "shepherd", "flock")]
    data = tmp_path / "summaries.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    before = run_summarization(str(word_folder), data, steps=0, max_new_tokens=6)
    after = run_summarization(str(word_folder), data, data, steps=40, lr=3e-3,
                              max_new_tokens=6)
    assert after["rouge1"] == pytest.approx(100.0) and before["rouge1"] < 50
    assert after["samples"][0] == "the sheep ran."
    assert after["eval_examples"] == 4 and after["final_loss"] < 0.5


def test_needs_article_and_summary(word_folder, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "x", "highlights": "y"}))
    with pytest.raises(ValueError, match="expected article/summary"):
        run_summarization(str(word_folder), data)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"article": "the dog", "summary": "dog"}))
    with pytest.raises(ValueError, match="--train"):
        run_summarization(str(word_folder), good, steps=1)
