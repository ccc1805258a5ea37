"""Classification fine-tuning: the classifier built from a (BitNet) causal checkpoint, labels,
and learning a toy separable task well above chance."""

from __future__ import annotations

import json
import random

import pytest
import torch

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.eval.classification import label_ids, load_classifier, run_classification
from wrinklefree.eval.tasks import load_examples
from wrinklefree.nn import BitLinear

FILLER = "the a of and to in that it was for on with as his at by".split()


def toy_split(path, n: int, seed: int) -> None:
    """Label 1 iff the sentence contains 'good' (else 'bad'), among random filler words."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            label = rng.randrange(2)
            words = rng.choices(FILLER, k=6)
            words.insert(rng.randrange(7), "good" if label else "bad")
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    toy_split(folder / "train.jsonl", 200, seed=0)
    toy_split(folder / "dev.jsonl", 64, seed=1)
    return folder / "train.jsonl", folder / "dev.jsonl"


@pytest.fixture(scope="module")
def bitnet_word_folder(word_folder, tmp_path_factory):
    """The word-level tiny model converted to BitNet b1.58 (ternary, SubLN)."""
    from wrinklefree.models import load_model, load_tokenizer

    folder = tmp_path_factory.mktemp("bitnet-words")
    model = convert_model_to_bitnet(load_model(str(word_folder)), calibrate=False)
    model.save_pretrained(folder)
    load_tokenizer(str(word_folder)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("source", ["word_folder", "bitnet_word_folder"])
def test_learns_a_separable_task(source, toy_task, request):
    folder = str(request.getfixturevalue(source))
    train, dev = toy_task
    before = run_classification(folder, train, dev, steps=0)
    after = run_classification(folder, train, dev, steps=60, lr=3e-3, batch_size=16)
    assert after["accuracy"] >= 0.9  # chance is 0.5
    assert after["accuracy"] > before["accuracy"]
    assert after["eval_examples"] == 64 and after["num_labels"] == 2


def test_bitnet_checkpoint_keeps_its_ternary_decoder(gpt2_tokenizer, save_tiny, tmp_path):
    causal = save_tiny(tmp_path, gpt2_tokenizer)
    convert_model_to_bitnet(causal, calibrate=False)
    causal.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path), num_labels=3, pad_token_id=0)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert isinstance(model.model.layers[0].self_attn.o_proj, BitLinear)
    assert not isinstance(model.score, BitLinear)  # the new head stays full precision
    assert model.score.out_features == 3 and model.config.bitnet is not None
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = causal.model(input_ids=ids).last_hidden_state
        assert torch.equal(model.model(input_ids=ids).last_hidden_state, expected)


def test_string_labels_and_pairs(tmp_path):
    rows = [{"text_a": "a", "text_b": "b", "label": "neutral"},
            {"text_a": "c", "text_b": "d", "label": "entailment"}]
    path = tmp_path / "nli.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples = load_examples(path)
    assert label_ids(examples, examples) == {"entailment": 0, "neutral": 1}
    with pytest.raises(ValueError, match="never occur"):
        label_ids(examples[:1], examples)


def test_bad_inputs(tiny_folder, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"sentence": "x", "label": 0}) + "\n")
    with pytest.raises(ValueError, match="expected text/label or text_a/text_b/label"):
        run_classification(str(tiny_folder), path, path, steps=0)
    with pytest.raises(ValueError, match="--eval"):
        run_classification(str(tiny_folder), path, steps=0)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="negative label"):
        label_ids([{"label": -1}], [])
