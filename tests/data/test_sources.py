"""Reading documents from text / jsonl / parquet files, folders, globs, HF folders and the ASV."""

from __future__ import annotations

import json
import os

import pytest

from wrinklefree.data.config import DataConfig, SourceConfig
from wrinklefree.data.heldout import asv_split
from wrinklefree.data.identity import source_identity
from wrinklefree.data.sources import iter_documents, source_files


def test_text_file_documents_are_blank_line_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\n  \n\nsecond\n\n\nthird  \n", encoding="utf-8")
    source = SourceConfig(name="a", path=str(path))
    assert list(iter_documents(source)) == ["first para\nstill first", "second", "third"]
    assert list(iter_documents(source, start=2)) == ["third"]


def test_jsonl_parquet_folder_and_glob(tmp_path, make_jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sub = tmp_path / "corpus" / "nested"
    sub.mkdir(parents=True)
    (tmp_path / "corpus" / "a.jsonl").write_text(
        json.dumps({"text": "j1", "id": 1}) + "\n\n" + json.dumps({"text": "j2"}) + "\n")
    pq.write_table(pa.table({"text": ["p1", "", "p2"]}), sub / "b.parquet")
    (sub / "c.txt").write_text("t1\n\nt2")
    (sub / "notes.csv").write_text("ignored,in,a,folder")

    folder = SourceConfig(name="f", path=str(tmp_path / "corpus"))
    assert list(iter_documents(folder)) == ["j1", "j2", "p1", "p2", "t1", "t2"]
    glob = SourceConfig(name="g", path=str(tmp_path / "corpus" / "**" / "*.parquet"))
    assert [p.name for p in source_files(glob)] == ["b.parquet"]
    assert list(iter_documents(glob)) == ["p1", "p2"]


def test_unknown_extension_and_missing_field_and_no_match_are_clear_errors(tmp_path):
    odd = tmp_path / "data.csv"
    odd.write_text("x")
    with pytest.raises(ValueError, match="set format"):
        list(iter_documents(SourceConfig(name="x", path=str(odd))))
    assert list(iter_documents(SourceConfig(name="x", path=str(odd), format="text"))) == ["x"]

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(KeyError, match="text_field"):
        list(iter_documents(SourceConfig(name="r", path=str(rows))))
    assert list(iter_documents(SourceConfig(name="r", path=str(rows), text_field="body"))) == [
        "hello"]

    with pytest.raises(FileNotFoundError, match="matches no data files"):
        source_files(SourceConfig(name="n", path=str(tmp_path / "missing*.jsonl")))


def test_hf_dataset_source_streams_a_local_dataset_folder(tmp_path, make_jsonl):
    folder = tmp_path / "hf_ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"content": f"doc {i}"}) + "\n"
                                                for i in range(5)))
    source = SourceConfig(name="hf", hf_name=str(folder), text_field="content")
    assert list(iter_documents(source, start=3)) == ["doc 3", "doc 4"]


def test_asv_source_is_the_train_split():
    train, heldout = asv_split()
    docs = iter_documents(SourceConfig())  # name "asv" alone
    assert [next(docs) for _ in range(3)] == train[:3]
    by_path = SourceConfig(name="bible", path="asv://")
    assert by_path.is_asv and next(iter_documents(by_path, start=5)) == train[5]
    assert not set(train[:200]) & set(heldout)


def test_identity_changes_when_a_file_changes(tmp_path, make_jsonl):
    path = make_jsonl("a", ["one", "two"])
    source = SourceConfig(name="a", path=str(path))
    before = source_identity(source)
    assert source_identity(source) == before
    path.write_text(json.dumps({"text": "one!"}) + "\n")
    os.utime(path, ns=(1, 1))
    assert source_identity(source) != before


def test_config_validation_and_conversion():
    with pytest.raises(ValueError, match="exactly one"):
        SourceConfig(name="x", path="a.txt", hf_name="b").validate()
    with pytest.raises(ValueError, match="neither path nor hf_name"):
        SourceConfig(name="x").validate()
    with pytest.raises(ValueError, match="unique"):
        DataConfig(sources=[SourceConfig(), SourceConfig()]).validate()
    with pytest.raises(ValueError, match="all source weights are zero"):
        DataConfig(sources=[SourceConfig(weight=0.0)]).validate()

    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.structured(DataConfig),
                           {"seq_len": 64, "sources": [{"name": "web", "path": "/x/*.jsonl"}]})
    config = DataConfig.from_dict(node)
    assert isinstance(config.sources[0], SourceConfig) and config.sources[0].path == "/x/*.jsonl"
    assert config.seq_len == 64
    weighted = DataConfig.from_dict({"sources": [{"name": "asv", "weight": 2.0}]})
    assert weighted.sources[0].weight == 2.0
    with pytest.raises(ValueError, match="seqlen"):
        DataConfig.from_dict({"seqlen": 3})
    with pytest.raises(ValueError, match=r"data\.seq_len=1 is out of range.*>= 2"):
        DataConfig(seq_len=1).validate(prefix="data.")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "ok"}\n{"body": "no text"}\n', r"rows\.jsonl:2 has no field 'text'"),
    (b'{"text": "ok"}\n\n{"text": oops}\n', r"rows\.jsonl:3 is not valid JSON"),
    (b'{"text": "ok"}\n["a", "list"]\n', r"rows\.jsonl:2 is a JSON list"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"rows\.jsonl:2 is not valid UTF-8"),
])
def test_bad_jsonl_lines_name_the_file_and_line(tmp_path, content, message):
    from wrinklefree.errors import UserInputError

    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(content)
    with pytest.raises(UserInputError, match=message):
        list(iter_documents(SourceConfig(name="r", path=str(rows))))


def test_invalid_utf8_text_names_the_file_and_line(tmp_path):
    from wrinklefree.errors import UserInputError

    path = tmp_path / "latin1.txt"
    path.write_bytes(b"one\n\ntwo\nthr\xe9e\n")
    with pytest.raises(UserInputError, match=r"latin1\.txt:4 is not valid UTF-8.*iconv"):
        list(iter_documents(SourceConfig(name="l", path=str(path))))


def test_missing_field_message_is_not_quoted(tmp_path):
    """Still a KeyError for old callers, but its text is the plain message (no repr quotes)."""
    from wrinklefree.data.sources import _jsonl_documents

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(KeyError) as info:
        list(_jsonl_documents(rows, "text"))
    assert str(info.value).startswith(f"{rows}:1 has no field 'text'")


def test_the_missing_field_fix_is_an_override_that_works(tmp_path):
    """Issue 31 item 10: the message's override sets the key as is (no `+`), as the docs say."""
    from wrinklefree.train.compose import compose_train_config

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "x", "id": 1}) + "\n")
    with pytest.raises(KeyError) as info:
        list(iter_documents(SourceConfig(name="r", path=str(rows))))
    fix = "data.sources.0.text_field=body"
    assert f"set the source's text_field, e.g. {fix} (0: the source's position" in str(info.value)
    config = compose_train_config(["data=local_files", f"data.sources.0.path={rows}", fix])
    assert config.data.sources[0].text_field == "body"
    assert list(iter_documents(SourceConfig(name="r", path=str(rows), text_field="body"))) == ["x"]
