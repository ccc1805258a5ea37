"""Load source models and tokenizers by one name: ``smollm2``, a GGUF file, a folder, a hub id.

Everything that needs a model (``wf convert``, training, eval, export) goes through
:func:`load_model`, so the rules for each kind of source live in one place.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from wrinklefree import assets
from wrinklefree.convert import bitnet_config_of, load_bitnet

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

    if src == EMBEDDED:
        src = str(_cached_embedded())
    gguf = _resolve_gguf(src)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
    return AutoTokenizer.from_pretrained(_checked_source(src))


def _checked_source(src: str) -> str:
    path = Path(src)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{src} exists but is not a Hugging Face model folder (no config.json); pass a model "
            f"folder, a .gguf file, a hub id, or '{EMBEDDED}' for the embedded SmolLM2-135M"
        )
    if not path.exists() and (src.startswith((".", "/", "~")) or src.count("/") > 1):
        raise FileNotFoundError(f"model path {src} does not exist")
    return src


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
    :func:`~wrinklefree.convert.load_bitnet`), or a hub id (needs network).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if src == EMBEDDED:
        src = str(_cached_embedded())
    gguf = _resolve_gguf(src)
    if gguf is not None:
        model = auto.from_pretrained(gguf[0], gguf_file=gguf[1], **kwargs)
        model = _plain_copy(model, dtype)
    else:
        src = _checked_source(src)
        if Path(src).is_dir() and bitnet_config_of(AutoConfig.from_pretrained(src)) is not None:
            model = load_bitnet(src, torch_dtype=dtype, **kwargs)
        else:
            model = auto.from_pretrained(src, dtype=dtype, **kwargs)
    return model.to(dtype).eval()
