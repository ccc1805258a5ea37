"""Load source models and tokenizers by one name: ``smollm2``, a GGUF file, a folder, a hub id.

Everything that needs a model (``wf convert``, training, eval, export) goes through
:func:`load_model`, so the rules for each kind of source live in one place.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from wrinklefree import assets
from wrinklefree.convert import check_safetensors, load_bitnet
from wrinklefree.errors import UserInputError, check_positions
from wrinklefree.nn.surgery import bitnet_config_of

EMBEDDED = "smollm2"


def embedded_cache_dir() -> Path:
    """Where the embedded model is kept as a plain fp32 safetensors folder after its first load
    (dequantizing the GGUF takes ~40 s on 2 cores; the cached folder loads in ~2 s)."""
    return Path.home() / ".cache" / "wrinklefree" / "smollm2-135m-instruct"


def _cached_embedded() -> Path:
    """The embedded SmolLM2 as a local HF folder (model + tokenizer), built once, atomically."""
    import os
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = embedded_cache_dir()
    if (target / "config.json").is_file():
        return target
    gguf = assets.smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = _plain_copy(model, torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolve_gguf(src: str) -> tuple[Path, str] | None:
    path = Path(src)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return path.parent, path.name
    return None


def _plain_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A GGUF-loaded model counts as 'quantized' to transformers (no save, no .float());
    rebuild a plain model from its config and copy the dequantized weights in."""
    import copy

    config = copy.deepcopy(model.config)
    config.dtype = dtype
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)._from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    return plain


def load_tokenizer(src: str):
    """The tokenizer that belongs to ``src`` (same rules as :func:`load_model`)."""
    from transformers import AutoTokenizer

    src = resolve_source(src)
    if src == EMBEDDED:
        src = str(_cached_embedded())
    gguf = _resolve_gguf(src)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
    return _from_hub_or_folder(AutoTokenizer.from_pretrained, src)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(src: str) -> str:
    """Where a model source lives, checked before anything loads; every command uses this.

    A run folder means its ``final/`` model; ``smollm2``, an existing ``.gguf`` file and a model
    folder (``config.json``) pass as they are. A name that is not on disk is a hub id only when
    it cannot be a mistyped local path: ``runs/typo`` (``runs/`` exists here), ``./x``,
    ``a/b/c`` are refused here instead of being sent to the Hub.
    """
    path = Path(src).expanduser()
    if src == EMBEDDED:
        return src
    if (path / "final" / "config.json").is_file():
        return str(path / "final")
    if path.suffix == ".gguf" or path.exists():
        if path.suffix == ".gguf" and not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist; check the path")
        if path.is_dir() and not (path / "config.json").is_file():
            raise UserInputError(
                f"{src} is neither a model folder (config.json) nor a run folder "
                "(final/config.json); pass the folder written by `wf convert` or by training, a "
                f".gguf file, a hub id, or '{EMBEDDED}' for the embedded SmolLM2-135M"
            )
        return str(path)
    if _looks_local(src):
        raise FileNotFoundError(
            f"model path {src} does not exist (not a model folder, run folder or .gguf file "
            "here, and not a Hugging Face hub id); check the path"
        )
    return src


def _looks_local(src: str) -> bool:
    """A missing source that must be a local path, not a hub id (``org/name``)."""
    if src.startswith((".", "/", "~")) or src.endswith("/") or "\\" in src:
        return True
    if not HUB_ID.match(src):
        return True
    first = src.split("/", 1)[0]
    return "/" in src and Path(first).is_dir()  # runs/typo: ``runs/`` is a folder here


def _from_hub_or_folder(load, src: str, **kwargs):
    """``load(src)`` for a local folder or hub id; a hub id that cannot be fetched (offline,
    misspelt, private) is a one-line error naming it instead of a raw OSError."""
    try:
        return load(src, **kwargs)
    except OSError as err:
        if Path(src).exists():
            raise
        reason = str(err).splitlines()[0][:200]
        raise UserInputError(
            f"{src} is not a local model and could not be loaded from the Hugging Face hub "
            f"({reason}); check the name, or the network (HF_HUB_OFFLINE=1 allows cached models "
            "only)"
        ) from err


def load_model(
    src: str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    sequence_classification: bool = False,
    **kwargs,
) -> nn.Module:
    """Load a causal LM (or ``*ForSequenceClassification``) in ``dtype``, in eval mode.

    ``src`` is ``smollm2`` (the embedded SmolLM2-135M-Instruct GGUF), a ``.gguf`` file, a local
    Hugging Face folder (a wrinklefree BitNet checkpoint is detected and loaded with
    :func:`~wrinklefree.convert.load_bitnet`), a trainer run folder (its ``final/`` model) or a
    hub id (needs network); see :func:`resolve_source`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    src = resolve_source(src)
    if src == EMBEDDED:
        src = str(_cached_embedded())
    gguf = _resolve_gguf(src)
    if Path(src).is_dir():
        check_safetensors(Path(src))
    if gguf is not None:
        model = auto.from_pretrained(gguf[0], gguf_file=gguf[1], **kwargs)
        model = _plain_copy(model, dtype)
    elif Path(src).is_dir() and bitnet_config_of(AutoConfig.from_pretrained(src)) is not None:
        model = load_bitnet(src, torch_dtype=dtype, **kwargs)
    else:
        model = _from_hub_or_folder(auto.from_pretrained, src, dtype=dtype, **kwargs)
    return model.to(dtype).eval()


def check_context(model: nn.Module, tokens: int, what: str, fix: str) -> None:
    """Refuse ``tokens`` positions beyond the model's ``max_position_embeddings``: past it the
    position embeddings are extrapolated and the output silently degrades."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    check_positions(tokens, limit, what, fix)
