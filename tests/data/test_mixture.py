"""The mixture stream: window contents, sampling by weight, phase switches, exact resume, ranks."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wrinklefree.data import (
    DataConfig,
    SourceConfig,
    build_train_stream,
    build_val_windows,
    collate,
    heldout_windows,
    phase_weights,
)

L = 8


@pytest.fixture
def two_sources(tmp_path, make_jsonl, make_docs):
    """A config with a big source 'a' (many shards) and a small source 'b' (wraps often)."""
    a = make_jsonl("a", make_docs("a", 40))
    b = make_jsonl("b", make_docs("b", 3))
    return DataConfig(sources=[SourceConfig(name="a", path=str(a), weight=0.75),
                               SourceConfig(name="b", path=str(b), weight=0.25)],
                      seq_len=L, cache_dir=str(tmp_path / "cache"), seed=3, shard_docs=4)


def take(stream, n: int) -> list[list[int]]:
    return [stream.next_window()["input_ids"].tolist() for _ in range(n)]


def all_tokens(store) -> list[int]:
    """A fully tokenised source's tokens: its shards concatenated."""
    return np.concatenate([store.shard(i) for i in range(store.num_shards)]).tolist()


def epoch_chunks(reader, epoch: int) -> list[list[int]]:
    """Every aligned window of an epoch, in token order (the epoch's offset from its plan)."""
    offset, order = reader.plan(epoch)
    tokens = all_tokens(reader.store)
    return [tokens[offset + p * L:offset + (p + 1) * L] for p in range(len(order))]


def test_each_epoch_reads_every_window_once_in_a_new_random_order(two_sources, tokenizer):
    two_sources.sources[1].weight = 0.0
    stream = build_train_stream(two_sources, tokenizer)
    reader = stream.readers["a"]
    assert reader.store.num_shards == 10
    assert reader.store.read(5, 30).tolist() == all_tokens(reader.store)[5:35]  # across shards
    for epoch in range(3):
        chunks = epoch_chunks(reader, epoch)
        windows = take(stream, len(chunks))
        assert sorted(windows) == sorted(chunks)  # each aligned window exactly once
        assert windows != chunks  # but not in text order
    offsets = {reader.plan(e)[0] for e in range(6)}
    assert len(offsets) > 1 and all(0 <= o < L for o in offsets)  # window boundaries move
    window = stream.next_window()
    assert window["position_ids"].tolist() == _positions(window["input_ids"].tolist(),
                                                          tokenizer.eos_token_id)


def test_a_streamed_source_is_read_in_stream_order(tmp_path, tokenizer, make_docs):
    import json

    folder = tmp_path / "hf_ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in make_docs("s", 9)))
    config = DataConfig(sources=[SourceConfig(name="hf", hf_name=str(folder))], seq_len=L,
                        cache_dir=str(tmp_path / "cache"), shard_docs=4)
    stream = build_train_stream(config, tokenizer)
    first = take(stream, 12)
    store = stream.readers["hf"].store
    tokens = all_tokens(store)  # the stream has now reached its end once
    cycled = (tokens * 3)[:12 * L]
    assert first == [cycled[i * L:(i + 1) * L] for i in range(12)]
    rank1 = build_train_stream(config, tokenizer, rank=1, world_size=2)
    assert take(rank1, 3) == first[1:6:2]


def _positions(ids: list[int], eos: int) -> list[int]:
    out, pos = [], 0
    for t in ids:
        out.append(pos)
        pos = 0 if t == eos else pos + 1
    return out


def test_sources_are_sampled_by_weight(two_sources, tokenizer):
    stream = build_train_stream(two_sources, tokenizer)
    draws = [stream.draw_source(k) for k in range(4000)]
    assert abs(draws.count("a") / 4000 - 0.75) < 0.03
    # draw k is inverse-CDF sampling of u_k = rng([seed, k]).random() with CDF [0.75, 1.0]
    for k in range(20):
        u = np.random.default_rng([3, k]).random()
        assert draws[k] == ("a" if u < 0.75 else "b")
    take(stream, 400)
    assert abs(stream.counts["a"] / 400 - 0.75) < 0.07


def test_set_weights_switches_the_mixture_immediately(two_sources, tokenizer):
    stream = build_train_stream(two_sources, tokenizer)
    take(stream, 10)
    b_before = stream.counts["b"]
    stream.set_weights(phase_weights({"sources": [{"name": "b", "path": "x", "weight": 3.0}]}))
    assert stream.weights == {"a": 0.0, "b": 1.0}
    windows = take(stream, 30)
    assert stream.counts["b"] == b_before + 30
    two_sources.sources[0].weight = 0.0  # b alone: its window sequence, uninterrupted
    b_alone = take(build_train_stream(two_sources, tokenizer), b_before + 30)
    assert windows == b_alone[b_before:]
    stream.set_weights({"a": 1, "b": 1})
    assert stream.weights == {"a": 0.5, "b": 0.5}
    with pytest.raises(KeyError, match="unknown data source.*'web'"):
        stream.set_weights({"a": 1, "web": 1})
    with pytest.raises(ValueError, match="not all 0"):
        stream.set_weights({"a": 0})


def test_resume_from_state_dict_gives_identical_windows(two_sources, tokenizer):
    stream = build_train_stream(two_sources, tokenizer)
    take(stream, 23)
    stream.set_weights({"a": 0.4, "b": 0.6})
    take(stream, 14)  # 'b' has wrapped over several epochs by now
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    expected = take(stream, 40)

    restored = build_train_stream(two_sources, tokenizer)  # weights back at 0.75 / 0.25
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.weights == pytest.approx({"a": 0.4, "b": 0.6})
    assert take(restored, 40) == expected


def test_resume_is_exact_when_the_loader_read_ahead_and_weights_changed(two_sources, tokenizer):
    """Lightning-like loop: the next batch is fetched before the step runs, and a phase switch
    plus an influence-style source batch happen in the checkpointed step itself."""
    batch = 3

    def events(stream, step):
        if step == 4:
            stream.set_weights({"a": 0.1, "b": 0.9})
        if step in (4, 6):
            stream.source_batch("a", 2)
        if step == 7:
            stream.set_weights({"a": 1.0})

    def loop(stream, first, last, checkpoint=None, rewind=True):
        trained, state = [], None
        fetch = lambda: [stream.next_window()["input_ids"].tolist() for _ in range(batch)]  # noqa: E731
        ahead = fetch()
        for step in range(first, last + 1):
            current, ahead = ahead, fetch()  # prefetch, as Lightning does
            trained.append(current)
            events(stream, step)
            if step == checkpoint:
                state = stream.state_dict(windows=step * batch if rewind else None)
        return trained, state

    original, state = loop(build_train_stream(two_sources, tokenizer), 1, 10, checkpoint=4)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed_stream = build_train_stream(two_sources, tokenizer)
    resumed_stream.load_state_dict(torch.load(buffer, weights_only=True))
    resumed, _ = loop(resumed_stream, 5, 10)
    assert resumed == original[4:]
    # the plain current state would lose the prefetched batch 5 on resume
    _, ahead_state = loop(build_train_stream(two_sources, tokenizer), 1, 10, 4, rewind=False)
    skipped = build_train_stream(two_sources, tokenizer)
    skipped.load_state_dict(ahead_state)
    assert loop(skipped, 5, 10)[0] != original[4:]
    with pytest.raises(ValueError, match="only windows"):
        resumed_stream.state_dict(windows=2)


def test_resume_refuses_changed_data(two_sources, tokenizer, make_jsonl, make_docs):
    state = build_train_stream(two_sources, tokenizer).state_dict()
    two_sources.sources[1].path = str(make_jsonl("b2", make_docs("c", 3)))
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        build_train_stream(two_sources, tokenizer).load_state_dict(state)


def test_ranks_read_disjoint_windows_and_share_one_state(two_sources, tokenizer):
    rank0 = build_train_stream(two_sources, tokenizer, rank=0, world_size=2)
    rank1 = build_train_stream(two_sources, tokenizer, rank=1, world_size=2)
    w0, w1 = take(rank0, 30), take(rank1, 30)
    assert rank0.state_dict() == rank1.state_dict()  # rank 0's checkpoint restores every rank
    a0, a1 = rank0.readers["a"], rank1.readers["a"]
    assert a0.epoch == 0  # still inside the first epoch of 'a': no window may repeat
    mine0 = [w for w, k in zip(w0, range(30), strict=True) if rank0.draw_source(k) == "a"]
    mine1 = [w for w, k in zip(w1, range(30), strict=True) if rank1.draw_source(k) == "a"]
    chunks = Counter(tuple(w) for w in epoch_chunks(a0, 0))  # (texts repeat: count them)
    assert len(mine0) == len(mine1)
    assert not Counter(tuple(w) for w in mine0 + mine1) - chunks  # disjoint windows of the epoch
    # over a whole epoch the two ranks together read every window once (an odd one out dropped)
    half = chunks.total() // 2
    rest0 = [a0.next_window().tolist() for _ in range(half - len(mine0))]
    rest1 = [a1.next_window().tolist() for _ in range(half - len(mine1))]
    together = Counter(tuple(w) for w in mine0 + mine1 + rest0 + rest1)
    assert not together - chunks and chunks.total() - together.total() == chunks.total() % 2


def test_dataloader_batches_and_refuses_worker_processes(two_sources, tokenizer):
    stream = build_train_stream(two_sources, tokenizer)
    batch = next(iter(DataLoader(stream, batch_size=4, collate_fn=collate, num_workers=0)))
    assert batch["input_ids"].shape == batch["position_ids"].shape == (4, L)
    assert torch.equal(batch["labels"], batch["input_ids"])
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(DataLoader(stream, batch_size=4, collate_fn=collate, num_workers=1)))


def test_val_windows_are_the_heldout_tokens_with_packed_positions(tokenizer):
    windows = build_val_windows(tokenizer, seq_len=32, num_windows=3)
    assert torch.equal(torch.stack([w["input_ids"] for w in windows]),
                       heldout_windows(tokenizer, seq_len=32, num_windows=3, split="validation"))
    eos = tokenizer.eos_token_id
    for w in windows:
        assert w["position_ids"].tolist() == _positions(w["input_ids"].tolist(), eos)


@pytest.mark.slow
def test_default_config_streams_the_asv_train_split_with_smollm2_tokenizer(tmp_path, monkeypatch):
    from wrinklefree.data import asv_split
    from wrinklefree.data.cache import TokenStore
    from wrinklefree.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    config = DataConfig(cache_dir=str(tmp_path), seq_len=128)
    stream = build_train_stream(config, tokenizer)  # tokenises ~10k ASV documents once
    store = stream.readers["asv"].store
    assert store.num_shards == -(-len(asv_split()[0]) // config.shard_docs)
    assert store.dtype == np.uint16
    window = stream.next_window()
    assert window["input_ids"].shape == (128,) and stream.counts == {"asv": 1}
    monkeypatch.setattr(TokenStore, "tokenize", lambda self, docs: pytest.fail("re-tokenised"))
    again = build_train_stream(config, tokenizer)
    assert torch.equal(again.next_window()["input_ids"], window["input_ids"])
