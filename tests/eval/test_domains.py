"""The two evaluation domains: fixed windows, and the English corpus kept out of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wrinklefree import assets
from wrinklefree.data.config import SourceConfig
from wrinklefree.data.heldout import DOMAINS, domain_documents, domain_windows, heldout_windows
from wrinklefree.data.sources import source_files

CONFIGS = Path(__file__).parents[2] / "configs"


def test_english_documents_are_the_lee_corpus():
    docs = assets.english_documents()
    assert len(docs) == 300
    assert 55_000 < sum(len(d.split()) for d in docs) < 65_000
    assert docs[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert all("\n" not in d and d == d.strip() for d in docs)


def test_domain_windows_are_fixed(gpt2_tokenizer):
    windows = domain_windows(gpt2_tokenizer, seq_len=32, num_windows=3)
    assert set(windows) == set(DOMAINS)
    assert all(w.shape == (3, 32) for w in windows.values())
    # the ASV domain is exactly the held-out windows every earlier report used
    assert torch.equal(windows["asv"], heldout_windows(gpt2_tokenizer, 32, 3))
    english = gpt2_tokenizer.decode(windows["english"][0])
    assert english.startswith("Hundreds of people")
    again = domain_windows(gpt2_tokenizer, 32, 3, domains=("english",))
    assert torch.equal(again["english"], windows["english"])
    with pytest.raises(ValueError, match="unknown evaluation domain 'french'"):
        domain_documents("french")


def test_a_source_pointing_at_the_english_corpus_is_refused(tmp_path):
    corpus = assets.english_corpus_path()
    for path in (str(corpus), str(corpus.parent), str(corpus.parent / "lee_*.cor")):
        with pytest.raises(ValueError, match="evaluation corpus"):
            source_files(SourceConfig(name="leak", path=path, format="text"))
    ok = tmp_path / "mine.txt"
    ok.write_text("some text")
    assert source_files(SourceConfig(name="mine", path=str(ok))) == [ok]


def test_no_preset_trains_on_the_english_corpus():
    for yaml in CONFIGS.rglob("*.yaml"):
        text = yaml.read_text()
        assert "lee_background" not in text and "gensim" not in text, yaml
