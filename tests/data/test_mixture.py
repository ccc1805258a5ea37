"""The mixture stream: window contents, sampling by weight, phase switches, exact resume, ranks."""

from __future__ import annotations

import io

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


def source_tokens(stream, name: str, epochs: int) -> list[int]:
    """The source's token stream over ``epochs`` epochs, in its shard order."""
    reader = stream.readers[name]
    out: list[int] = []
    for epoch in range(epochs):
        for shard in reader._shard_order(epoch):
            out += reader.store.shard(int(shard)).tolist()
    return out


def test_a_source_is_cut_into_consecutive_windows_in_a_new_shard_order_each_epoch(
        two_sources, tokenizer):
    two_sources.sources[1].weight = 0.0
    stream = build_train_stream(two_sources, tokenizer)
    reader = stream.readers["a"]
    assert reader.store.num_shards == 10
    order0, order1 = reader._shard_order(0).tolist(), reader._shard_order(1).tolist()
    assert sorted(order0) == list(range(10)) and order0 != order1
    tokens = source_tokens(stream, "a", epochs=2)
    n = len(tokens) // L
    windows = take(stream, n)
    assert windows == [tokens[i * L:(i + 1) * L] for i in range(n)]
    window = stream.next_window()
    assert window["position_ids"].tolist() == _positions(window["input_ids"].tolist(),
                                                          tokenizer.eos_token_id)


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
    b_tokens = source_tokens(stream, "b", epochs=50)
    b_before = stream.counts["b"]
    stream.set_weights(phase_weights({"sources": [{"name": "b", "path": "x", "weight": 3.0}]}))
    assert stream.weights == {"a": 0.0, "b": 1.0}
    windows = take(stream, 30)
    assert stream.counts["b"] == b_before + 30
    start = b_before * L  # b's cursor: every earlier b window was consecutive
    assert windows == [b_tokens[start + i * L:start + (i + 1) * L] for i in range(30)]
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


def test_ranks_read_disjoint_interleaved_windows_and_share_one_state(two_sources, tokenizer):
    single = take(build_train_stream(two_sources, tokenizer), 60)
    rank0 = build_train_stream(two_sources, tokenizer, rank=0, world_size=2)
    rank1 = build_train_stream(two_sources, tokenizer, rank=1, world_size=2)
    w0, w1 = take(rank0, 30), take(rank1, 30)
    assert w0 != w1
    assert rank0.state_dict() == rank1.state_dict()  # rank 0's checkpoint restores every rank
    # per source, rank r gets windows r, r + 2, r + 4, ... of that source's window sequence
    for name in ("a", "b"):
        tokens = source_tokens(rank0, name, epochs=40)
        windows = [tokens[i * L:(i + 1) * L] for i in range(len(tokens) // L)]
        mine0 = [w for w, s in zip(w0, _sources(rank0, 30), strict=True) if s == name]
        mine1 = [w for w, s in zip(w1, _sources(rank1, 30), strict=True) if s == name]
        assert mine0 == windows[0:2 * len(mine0):2]
        assert mine1 == windows[1:2 * len(mine1):2]
    assert len(single) == 60


def _sources(stream, n: int) -> list[str]:
    return [stream.draw_source(k) for k in range(n)]


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
                       heldout_windows(tokenizer, seq_len=32, num_windows=3))
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
