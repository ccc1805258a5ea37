"""Read the documents of one source: local text / jsonl / parquet files, a HF dataset, or the ASV.

A *document* is the unit that gets an EOS after it and its own position ids: a blank-line separated
paragraph of a text file, one row of a jsonl / parquet file or HF dataset, one ASV document.
Whitespace-only documents are dropped everywhere, so document ``k`` means the same thing whichever
way the source is read (that is what lets a half-built token cache resume at document ``k``).
"""

from __future__ import annotations

import glob
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from wrinklefree import assets
from wrinklefree.data import overlap
from wrinklefree.data.config import SourceConfig
from wrinklefree.data.heldout import asv_split
from wrinklefree.errors import MissingFieldError, UserInputError, did_you_mean

EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet",
}  # fmt: skip


def source_files(source: SourceConfig) -> list[Path]:
    """The files of a ``path`` source, sorted: the file itself, a folder's files, or a glob."""
    raw = str(Path(source.path).expanduser())
    path = Path(raw)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in candidates if p.suffix in EXTENSIONS or source.format != "auto"]
    else:
        files = sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(
            f"source '{source.name}': path {source.path!r} matches no data files "
            f"(expected a file, a folder with {sorted(EXTENSIONS)} files, or a glob)"
        )
    refuse_evaluation_text(source, files)
    return files


def refuse_evaluation_text(source: SourceConfig, files: list[Path]) -> None:
    """Training on evaluation text would make its perplexity meaningless: a source that reaches
    the general-English corpus file, or whose files share passages with an evaluation corpus
    (a copy under another name, pasted held-out chapters; ``data/overlap.py``), is an error."""
    try:
        heldout = assets.english_corpus_path().resolve()
    except FileNotFoundError:  # not installed: nothing to protect
        heldout = None
    if heldout is not None and any(p.resolve() == heldout for p in files):
        raise UserInputError(
            f"source '{source.name}': path {source.path!r} includes {heldout}, the general-English "
            "evaluation corpus (wf eval --domain english); it must never be trained on. Point the "
            "source at other text (exclude gensim's test_data folder)"
        )
    for path in overlap.sample_files(files):
        shared = _shared_with_evaluation(path, source)
        for corpus, count in shared.items():
            if count >= overlap.MIN_SHARED:
                raise UserInputError(
                    f"source '{source.name}': {path} shares {count} passages of "
                    f"{overlap.SHINGLE} words with {corpus}, which must never be trained on; "
                    "remove that text from the source"
                )


_OVERLAP_VERDICTS: dict[tuple, dict[str, int]] = {}  # one check per file version per process


def _shared_with_evaluation(path: Path, source: SourceConfig) -> dict[str, int]:
    """:func:`overlap.shared_shingles` of the start of ``path``, remembered per (file, size,
    mtime, format): a source is listed several times per run (config check, cache key, read)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, source.format, source.text_field)
    if key not in _OVERLAP_VERDICTS:
        _OVERLAP_VERDICTS[key] = overlap.shared_shingles(_file_documents(path, source))
    return _OVERLAP_VERDICTS[key]


def file_format(path: Path, declared: str) -> str:
    """``declared`` unless it is ``auto``; then the format its extension implies."""
    if declared != "auto":
        return declared
    if path.suffix not in EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {path} from its extension; set format: text, jsonl or "
            "parquet on the source"
        )
    return EXTENSIONS[path.suffix]


def read_utf8(data: bytes, path: Path, first_line: int = 1) -> str:
    """``data`` decoded; invalid UTF-8 is an error naming the file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data[: err.start].count(b"\n")
        raise UserInputError(
            f"{path}:{line} is not valid UTF-8 ({err.reason}); convert the file to UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8) or leave it out"
        ) from err


def _text_documents(path: Path) -> Iterator[str]:
    yield from re.split(r"\n\s*\n", read_utf8(path.read_bytes(), path))


def missing_text_field(where: str, field: str, fields: list[str]) -> MissingFieldError:
    """The error for documents without the source's ``text_field``, with the override that sets
    it (a per-source key: no ``+`` needed)."""
    example = did_you_mean(field, fields).split("'")[1:2] or fields[:1] or ["FIELD"]
    return MissingFieldError(
        f"{where} has no field {field!r} (fields: {fields}); set the source's text_field, e.g. "
        f"data.sources.0.text_field={example[0]} (0: the source's position in data.sources)")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with path.open("rb") as f:  # line by line: a .jsonl file can be larger than memory
        for lineno, raw in enumerate(f, 1):
            line = read_utf8(raw, path, lineno)
            if line.strip():
                yield _jsonl_text(line, path, lineno, field)


def _jsonl_text(line: str, path: Path, lineno: int, field: str) -> str:
    """One jsonl line's text field; a bad line is an error naming the file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"{path}:{lineno} is not valid JSON ({err.msg} at column {err.colno}); each line "
            "of a .jsonl file must be one JSON object"
        ) from err
    if not isinstance(row, dict):
        raise UserInputError(f"{path}:{lineno} is a JSON {type(row).__name__}, not an object "
                             f"with a {field!r} field")
    if field not in row:
        raise missing_text_field(f"{path}:{lineno}", field, sorted(row))
    return row[field]


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise missing_text_field(str(path), field, table.schema_arrow.names)
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        yield from batch.column(0).to_pylist()


def _hf_documents(source: SourceConfig) -> Iterator[str]:
    import datasets

    ds = datasets.load_dataset(
        source.hf_name, source.hf_config, split=source.split, streaming=True
    )
    for row in ds:
        if source.text_field not in row:
            raise missing_text_field(f"dataset {source.hf_name!r}", source.text_field, sorted(row))
        yield row[source.text_field]


def _raw_documents(source: SourceConfig) -> Iterator[str]:
    if source.is_asv:
        yield from asv_split()[0]
    elif source.hf_name:
        yield from _hf_documents(source)
    else:
        for path in source_files(source):
            yield from _file_documents(path, source)


def _file_documents(path: Path, source: SourceConfig) -> Iterator[str]:
    """The documents of one file of ``source``, read in its format."""
    fmt = file_format(path, source.format)
    if fmt == "text":
        return _text_documents(path)
    if fmt == "jsonl":
        return _jsonl_documents(path, source.text_field)
    return _parquet_documents(path, source.text_field)


def iter_documents(source: SourceConfig, start: int = 0) -> Iterator[str]:
    """The source's non-empty documents (stripped), from document number ``start`` on."""
    if source.is_generated:
        raise TypeError(f"source '{source.name}' is sampled from a model, not read as text; "
                        "its tokens come from wrinklefree.data.generated.TeacherSampler")
    docs = (d.strip() for d in _raw_documents(source) if d is not None)
    return itertools.islice((d for d in docs if d), start, None)


def is_streaming(source: SourceConfig) -> bool:
    """HF sources are streamed and tokenised lazily; local files and the ASV are tokenised whole."""
    return bool(source.hf_name) and not source.is_asv
