"""The two evaluation domains: fixed windows, validation apart from test, the ASV text clean,
and evaluation text kept out of training by path and by content."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wrinklefree import assets
from wrinklefree.data.config import SourceConfig
from wrinklefree.data.heldout import (
    DOMAINS,
    REPORT_WINDOWS,
    SPLITS,
    asv_split,
    domain_documents,
    domain_windows,
    heldout_windows,
    split_documents,
)
from wrinklefree.data.mixture import build_val_windows
from wrinklefree.data.overlap import MIN_SHARED, SHINGLE, sample_files, words
from wrinklefree.data.sources import iter_documents, source_files
from wrinklefree.errors import UserInputError

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
    # the ASV domain is exactly the held-out test windows
    assert torch.equal(windows["asv"], heldout_windows(gpt2_tokenizer, 32, 3))
    english = gpt2_tokenizer.decode(windows["english"][0])
    assert english.startswith("Hundreds of people")  # article 0 is test text
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


def test_split_documents_by_hand():
    docs = [f"d{i}" for i in range(9)]
    assert split_documents(docs, "validation") == ["d3", "d7"]
    assert split_documents(docs, "test") == ["d0", "d1", "d2", "d4", "d5", "d6", "d8"]
    with pytest.raises(ValueError, match="unknown evaluation split 'train'"):
        split_documents(docs, "train")


def test_validation_and_test_text_are_disjoint_by_construction(gpt2_tokenizer):
    for domain in DOMAINS:
        validation, test = (domain_documents(domain, split) for split in SPLITS)
        assert validation and test and not set(validation) & set(test)
        assert not set(asv_split()[0]) & set(validation + test)
    # what training validates on (and the remix probe reads) is validation text, never test
    val = torch.stack([w["input_ids"] for w in build_val_windows(gpt2_tokenizer, 64, 8)])
    test = domain_windows(gpt2_tokenizer, 64, 8, ("asv",))["asv"]
    assert torch.equal(val, heldout_windows(gpt2_tokenizer, 64, 8, split="validation"))
    test_rows = {tuple(row.tolist()) for row in test}
    assert not any(tuple(row.tolist()) in test_rows for row in val)


@pytest.mark.slow
def test_every_domain_has_the_report_windows_in_smollm2_tokens():
    """>= 64 test windows x 128 SmolLM2 tokens per domain, and validation windows besides."""
    from wrinklefree.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    for split, needed in (("test", REPORT_WINDOWS), ("validation", 16)):
        windows = domain_windows(tokenizer, 128, 10_000, split=split)
        assert all(w.shape[0] >= needed for w in windows.values()), (split, windows)


def test_verse_numbers_are_stripped_from_a_hand_made_snippet():
    source = ('bible = Bible(\n    Version.AMERICAN_STANDARD,\n    """\n1. In the beginning God '
              "created the heavens. 2. And the earth was waste;\n3. And God said, Let there be "
              "light. 14.( for thou shalt worship no other god) and full of days.1. Blessed is "
              '20. And he said""",\n    {\n        1001001: 1,\n    },\n    {Book.GENESIS: '
              '"The First Book of Moses"},\n)\n')
    text = assets.strip_verse_numbers(assets.bible_string(source))
    assert text == ("In the beginning God created the heavens. And the earth was waste;\n"
                    "And God said, Let there be light. ( for thou shalt worship no other god) "
                    "and full of days. Blessed is And he said")


def test_the_asv_text_has_no_verse_numbers_and_no_code():
    text = assets.asv_text()
    assert text.startswith("In the beginning God created the heavens and the earth.")
    assert not re.search(r"\d", text), "a digit survived (verse number or the offsets dict)"
    assert "Book." not in text and text.endswith("be with the saints. Amen.")


def test_the_english_corpus_copied_under_another_name_is_refused(tmp_path):
    copy = tmp_path / "my_news.txt"
    copy.write_text(assets.english_corpus_path().read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        source_files(SourceConfig(name="news", path=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message and "source 'news'" in message and str(copy) in message
    assert "general-English evaluation corpus (lee_background.cor)" in message
    # re-wrapped and re-cased, as jsonl rows in a folder of other text: still found
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_mine.txt").write_text("Some text of my own.\n\nAnother paragraph of it.")
    rows = [{"text": d.upper().replace(". ", ".\n")} for d in assets.english_documents()[40:44]]
    (folder / "b_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserInputError, match=r"source 'mixed': .*b_rows\.jsonl shares"):
        list(iter_documents(SourceConfig(name="mixed", path=str(folder))))


def test_held_out_asv_chapters_in_a_file_are_refused(tmp_path):
    pasted = tmp_path / "bible.txt"
    pasted.write_text("\n\n".join(asv_split()[1][:3]))
    with pytest.raises(UserInputError, match="held-out ASV text"):
        source_files(SourceConfig(name="bible", path=str(pasted)))
    # the training side of the split is not evaluation text
    train = tmp_path / "train_side.txt"
    train.write_text("\n\n".join(asv_split()[0][100:103]))
    assert source_files(SourceConfig(name="bible", path=str(train))) == [train]


def test_a_quoted_passage_is_not_an_overlap(tmp_path):
    article = words(assets.english_documents()[7])
    quoted = tmp_path / "essay.txt"
    passage = article[: SHINGLE + MIN_SHARED - 2]  # MIN_SHARED - 1 shingles: one short
    quoted.write_text("As the news put it: " + " ".join(passage) + ". My own words follow here.")
    assert source_files(SourceConfig(name="essay", path=str(quoted))) == [quoted]
    longer = tmp_path / "longer.txt"
    longer.write_text(" ".join(article[: SHINGLE + MIN_SHARED - 1]))  # MIN_SHARED shingles
    with pytest.raises(UserInputError, match=f"shares {MIN_SHARED} passages of {SHINGLE} words"):
        source_files(SourceConfig(name="essay", path=str(longer)))


def test_sample_files_spreads_over_a_large_folder():
    assert sample_files(list(range(5)), 8) == [0, 1, 2, 3, 4]
    assert sample_files(list(range(100)), 4) == [0, 33, 66, 99]
