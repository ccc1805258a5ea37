"""The on-disk token cache: shard contents, cache hits, keys, atomic writes, resuming a build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wrinklefree.data.cache import END_FILE, TokenStore
from wrinklefree.data.config import SourceConfig


def expected_tokens(tokenizer, docs: list[str]) -> list[int]:
    """Each document tokenised alone, EOS after it: what the cache must hold."""
    out: list[int] = []
    for doc in docs:
        out += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return out


@pytest.fixture
def counting(monkeypatch):
    """Counts the documents TokenStore sends to the tokenizer."""
    seen = {"docs": 0}
    original = TokenStore.tokenize

    def tokenize(self, docs):
        seen["docs"] += len(docs)
        return original(self, docs)

    monkeypatch.setattr(TokenStore, "tokenize", tokenize)
    return seen


def test_shards_hold_documents_with_eos_and_a_second_run_does_not_retokenize(
        tmp_path, tokenizer, new_tokenizer, make_docs, make_jsonl, counting):
    docs = make_docs("d", 7)
    source = SourceConfig(name="a", path=str(make_jsonl("a", docs)))
    store = TokenStore(source, tokenizer, tmp_path / "cache", shard_docs=3)
    assert store.prepare() == 3  # 3 + 3 + 1 documents
    assert counting["docs"] == 7
    shards = [store.shard(i) for i in range(3)]
    assert store.shard(3) is None
    assert [len(s) for s in shards] == [len(expected_tokens(tokenizer, docs[i:i + 3]))
                                        for i in (0, 3, 6)]
    assert np.concatenate(shards).tolist() == expected_tokens(tokenizer, docs)
    assert shards[0].dtype == np.uint16
    assert json.loads((store.dir / END_FILE).read_text()) == {
        "num_shards": 3, "num_docs": 7, "shard_tokens": [len(s) for s in shards]}
    assert store.num_tokens == sum(len(s) for s in shards)
    assert store.read(len(shards[0]) - 2, 5).tolist() == np.concatenate(shards)[
        len(shards[0]) - 2:len(shards[0]) + 3].tolist()  # a read across a shard boundary
    assert not list(store.dir.glob(".tmp-*"))  # atomic writes leave no temporary files

    again = TokenStore(source, new_tokenizer(), tmp_path / "cache", shard_docs=3)
    assert again.key == store.key  # same tokenizer spec (retrained identically), same files
    assert again.prepare() == 3
    assert counting["docs"] == 7  # nothing re-tokenised
    assert again.shard(1).tolist() == shards[1].tolist()


def test_key_changes_with_file_tokenizer_and_settings(
        tmp_path, tokenizer, new_tokenizer, make_docs, make_jsonl):
    path = make_jsonl("a", make_docs("d", 4))
    source = SourceConfig(name="a", path=str(path))
    key = TokenStore(source, tokenizer, tmp_path, shard_docs=2).key
    assert TokenStore(SourceConfig(name="renamed", path=str(path)), tokenizer, tmp_path,
                      shard_docs=2).key == key  # the name is not part of what the tokens are
    assert TokenStore(source, tokenizer, tmp_path, shard_docs=3).key != key
    other = new_tokenizer(280)
    assert TokenStore(source, other, tmp_path, shard_docs=2).key != key
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert TokenStore(source, tokenizer, tmp_path, shard_docs=2).key != key


def test_half_built_cache_resumes_at_the_missing_shard(
        tmp_path, tokenizer, make_docs, make_jsonl, counting):
    docs = make_docs("d", 10)
    source = SourceConfig(name="a", path=str(make_jsonl("a", docs)))
    store = TokenStore(source, tokenizer, tmp_path, shard_docs=4)
    store.prepare()
    full = np.concatenate([store.shard(i) for i in range(3)]).tolist()
    (store.dir / END_FILE).unlink()  # as if the run had crashed while writing shard 2
    store.shard_path(2).unlink()
    counting["docs"] = 0
    fresh = TokenStore(source, tokenizer, tmp_path, shard_docs=4)
    assert fresh.prepare() == 3
    assert counting["docs"] == 2  # only the last shard's two documents
    assert np.concatenate([fresh.shard(i) for i in range(3)]).tolist() == full


def test_streaming_source_is_tokenised_lazily_shard_by_shard(
        tmp_path, tokenizer, make_docs, counting):
    folder = tmp_path / "hf_ds"
    folder.mkdir()
    docs = make_docs("s", 5)
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    store = TokenStore(SourceConfig(name="hf", hf_name=str(folder)), tokenizer, tmp_path / "c", 2)
    assert store.streaming and store.num_shards is None
    assert store.shard(1).tolist() == expected_tokens(tokenizer, docs[2:4])
    assert counting["docs"] == 2  # shard 0 was never needed
    assert store.shard(2).tolist() == expected_tokens(tokenizer, docs[4:])
    assert store.num_shards == 3 and store.shard(3) is None


def test_tokenizer_without_eos_is_a_clear_error(tmp_path, new_tokenizer, make_jsonl):
    tok = new_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        TokenStore(SourceConfig(name="a", path=str(make_jsonl("a", ["x"]))), tok, tmp_path, 2)
