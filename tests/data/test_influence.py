"""Influence scores (gradient alignment) and the bounded exponentiated-gradient remix step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from wrinklefree.data import (
    DataConfig,
    InfluenceRemixer,
    RemixConfig,
    SourceConfig,
    build_train_stream,
    build_val_windows,
    collate,
    estimate_source_influence,
    influence_params,
    remix_weights,
)


def test_remix_step_hand_computed():
    # u = w * exp(eta * s) = [0.5 e, 0.5 / e] -> a = e / (e + 1/e) = 1 / (1 + e^-2) = 0.880797
    out = remix_weights({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": -1.0}, step_size=1.0)
    assert out["a"] == pytest.approx(0.8807970780, abs=1e-9)
    assert out["b"] == pytest.approx(0.1192029220, abs=1e-9)
    # bounded to [0.2, 0.8]: clip(t * u) with sum 1 -> exactly the bounds
    out = remix_weights({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": -1.0}, 1.0, 0.2, 0.8)
    assert out == pytest.approx({"a": 0.8, "b": 0.2}, abs=1e-9)


def test_remix_projection_keeps_the_ratio_of_unclipped_sources():
    third = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    boost_a = {"a": math.log(4), "b": 0.0, "c": 0.0}  # u proportional to [4, 1, 1]
    assert remix_weights(third, boost_a, 1.0) == pytest.approx(
        {"a": 2 / 3, "b": 1 / 6, "c": 1 / 6}, abs=1e-9)
    # max 0.5: a = 0.5, the other 0.5 split 1 : 1
    assert remix_weights(third, boost_a, 1.0, 0.0, 0.5) == pytest.approx(
        {"a": 0.5, "b": 0.25, "c": 0.25}, abs=1e-9)
    # min 0.2: b = c = 0.2 (from 1/6), a = 0.6
    assert remix_weights(third, boost_a, 1.0, 0.2, 1.0) == pytest.approx(
        {"a": 0.6, "b": 0.2, "c": 0.2}, abs=1e-9)
    # step size 0 with unnormalised weights: only normalisation
    assert remix_weights({"a": 3, "b": 1}, {"a": 5, "b": -5}, 0.0) == pytest.approx(
        {"a": 0.75, "b": 0.25})


def test_remix_leaves_switched_off_sources_at_zero_and_checks_its_inputs():
    out = remix_weights({"a": 0.5, "b": 0.5, "off": 0.0}, {"a": 1.0, "b": -1.0}, 1.0, 0.2, 0.8)
    assert out == pytest.approx({"a": 0.8, "b": 0.2, "off": 0.0})
    with pytest.raises(KeyError, match="missing \\['b'\\]"):
        remix_weights({"a": 0.5, "b": 0.5}, {"a": 1.0}, 1.0)
    with pytest.raises(ValueError, match="n \\* min_weight <= 1"):
        remix_weights({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 0.0}, 1.0, 0.6, 0.9)


class Dot(nn.Module):
    """loss = w . x, so the gradient w.r.t. w is x: influence scores can be worked out by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.7]))


def dot_loss(model, batch):
    return (model.w * batch["x"]).sum()


def test_influence_is_the_alignment_of_source_and_probe_gradients():
    model = Dot()
    sources = {"a": {"x": torch.tensor([1.0, 0.0])}, "b": {"x": torch.tensor([0.0, 2.0])}}
    probe = {"x": torch.tensor([3.0, 4.0])}
    cosine = estimate_source_influence(model, dot_loss, sources, probe, [model.w])
    assert cosine == pytest.approx({"a": 3 / 5, "b": 8 / 10})  # (1,0).(3,4)/5 ; (0,2).(3,4)/(2*5)
    dot = estimate_source_influence(model, dot_loss, sources, probe, [model.w], metric="dot")
    assert dot == pytest.approx({"a": 3.0, "b": 8.0})
    assert model.w.grad is None  # .grad untouched


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2))


def test_influence_params_pick_the_last_layer_or_the_norms():
    model = tiny_llama()
    ids = {id(p): n for n, p in model.named_parameters()}
    last = sorted(ids[id(p)] for p in influence_params(model, "last_layer"))
    assert last == sorted([n for n in ids.values() if n.startswith("model.layers.2.")]
                          + ["model.norm.weight"])
    norms = sorted(ids[id(p)] for p in influence_params(model, "norms"))
    assert len(norms) == 2 * 3 + 1 and all("norm" in n for n in norms)
    with pytest.raises(ValueError, match="last_layer"):
        influence_params(model, "embeddings")


def test_remixer_moves_the_weights_on_schedule_and_logs(tmp_path, tokenizer, make_jsonl,
                                                        make_docs):
    a = make_jsonl("a", make_docs("a", 12))
    b = make_jsonl("b", make_docs("b", 12))
    config = DataConfig(sources=[SourceConfig(name="a", path=str(a)),
                                 SourceConfig(name="b", path=str(b))],
                        seq_len=16, cache_dir=str(tmp_path))
    stream = build_train_stream(config, tokenizer)
    probe = collate(build_val_windows(tokenizer, seq_len=16, num_windows=2,
                                      documents=make_docs("a", 12)))
    remix = RemixConfig(enabled=True, every_steps=5, step_size=2.0, min_weight=0.1,
                        max_weight=0.9, windows_per_source=2)
    remixer = InfluenceRemixer(stream, probe, remix)
    model = tiny_llama()
    assert remixer.maybe_remix(0, model) is None and remixer.maybe_remix(3, model) is None
    record = remixer.maybe_remix(5, model)
    assert record["step"] == 5 and set(record["scores"]) == {"a", "b"}
    expected = remix_weights({"a": 0.5, "b": 0.5}, record["scores"], 2.0, 0.1, 0.9)
    assert stream.weights == pytest.approx(expected)
    assert stream.weights["a"] != pytest.approx(0.5)
    assert remixer.history == [record]


def test_a_source_identical_to_the_probe_scores_one():
    model = tiny_llama()
    torch.manual_seed(1)
    probe = {"input_ids": torch.randint(0, 320, (2, 12))}
    probe["labels"] = probe["input_ids"]
    other = {"input_ids": torch.randint(0, 320, (2, 12))}
    other["labels"] = other["input_ids"]
    from wrinklefree.data.influence import causal_lm_loss

    scores = estimate_source_influence(model, causal_lm_loss, {"same": probe, "other": other},
                                       probe, influence_params(model))
    assert scores["same"] == pytest.approx(1.0, abs=1e-5)
    assert scores["other"] < 0.99


def test_probe_batch_follows_the_validation_windows(tokenizer):
    from wrinklefree.data import build_probe_batch

    val = collate(build_val_windows(tokenizer, seq_len=16, num_windows=5))
    probe = build_probe_batch(tokenizer, 16, RemixConfig(probe_windows=2), skip=3)
    assert torch.equal(probe["input_ids"], val["input_ids"][3:])
    assert torch.equal(probe["position_ids"], val["position_ids"][3:])
