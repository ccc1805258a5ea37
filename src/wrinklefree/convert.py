"""Convert a Hugging Face decoder into a BitNet b1.58 model, save it and load it back.

One entry point, :func:`convert_model_to_bitnet`: every ``nn.Linear`` whose qualified name is not
excluded becomes a :class:`~wrinklefree.nn.BitLinear` sharing the same tensors, and optionally
gets a SubLN on its input when it is an output projection (``o_proj`` / ``down_proj``). SubLN
gains are calibrated (on given batches, or on the built-in ASV text with the model's tokenizer):
unit gains wreck a pretrained model, so they are used only when asked for (``calibrate=False``).
The options are recorded in ``model.config.bitnet`` so :func:`load_bitnet` can rebuild the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from wrinklefree.errors import UserInputError
from wrinklefree.nn import BitLinear, SubLNLinear, convert_bitlinear_to_lrc
from wrinklefree.nn.surgery import (
    CONFIG_KEY,
    BitNetConfig,
    bitnet_config_of,
    record_bitnet,
    replace_modules,
)
from wrinklefree.quant import fwht

__all__ = [
    "BitNetConfig",
    "UnsupportedModelError",
    "bitnet_config_of",
    "build_bitnet",
    "calibrate_subln",
    "convert_for_loading",
    "convert_model_to_bitnet",
    "load_bitnet",
]

def _fp_layer_patterns(model: nn.Module, fp_layers: Iterable[int]) -> list[str]:
    """Regexes of the decoder layers in ``fp_layers`` (negative indices count from the end)."""
    fp_layers = list(fp_layers)
    if not fp_layers:
        return []
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is None:
        raise UserInputError("fp_layers needs model.config.num_hidden_layers, which this model "
                             "has not; name the layers in `exclude` instead")
    bad = [i for i in fp_layers if not -n <= int(i) < n]
    if bad:
        raise UserInputError(f"fp_layers {bad} outside the model's {n} decoder layers; use "
                             f"indices in [{-n}, {n - 1}] (negative counts from the end)")
    kept = sorted({int(i) % n for i in fp_layers})
    if len(kept) == n:
        raise UserInputError(f"fp_layers {fp_layers} keeps all {n} decoder layers of this model in "
                             "full precision, leaving nothing to quantize; name fewer layers "
                             "(model.convert.fp_layers=[] quantizes them all)")
    return [rf"(^|\.)layers\.{i}\." for i in kept]


def _quantizable_linears(model: nn.Module, exclude: Iterable[str],
                         fp_layers: Iterable[int] = ()) -> list[tuple[str, nn.Linear]]:
    patterns = [re.compile(p) for p in [*exclude, *_fp_layer_patterns(model, fp_layers)]]
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not isinstance(module, BitLinear)
        and not any(p.search(name) for p in patterns)
    ]


def _fp_layer_linears(model: nn.Module, fp_layers: Iterable[int],
                      leaves: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """The plain linears of the ``fp_layers`` whose leaf name is one of ``leaves``."""
    patterns = [re.compile(p) for p in _fp_layer_patterns(model, fp_layers)]
    return [(name, m) for name, m in model.named_modules()
            if type(m) is nn.Linear and name.rpartition(".")[2] in set(leaves)
            and any(p.search(name) for p in patterns)]


class UnsupportedModelError(UserInputError, TypeError):
    """The model has no ``nn.Linear`` projections to convert (a TypeError for older callers)."""


def convert_model_to_bitnet(
    model: nn.Module,
    config: BitNetConfig | None = None,
    *,
    calibration_batches: Iterable[dict[str, torch.Tensor]] | None = None,
    tokenizer=None,
    calibrate: bool = True,
    num_calibration_batches: int = 4,
    **overrides,
) -> nn.Module:
    """Replace the decoder's linears with BitLinear in place and return the model.

    With SubLN (the default) the norms' gains are calibrated so each projection keeps its input
    scale (see :func:`calibrate_subln`); unit gains would take a pretrained model's perplexity
    from ~16 to millions. The calibration text is ``calibration_batches`` if given, else the
    built-in ASV training text tokenised by ``tokenizer`` or, if None, by the tokenizer saved
    with the model (``model.name_or_path``, local files only).

    Args:
        config: the options; ``overrides`` (any :class:`BitNetConfig` field) replace its fields.
        calibration_batches: model inputs (``input_ids`` ...) to calibrate SubLN gains on.
        tokenizer: the model's tokenizer, to calibrate on the built-in text.
        num_calibration_batches: batches of the built-in text (2 windows of up to 256 tokens
            each) when ``calibration_batches`` is not given.
        calibrate: False keeps SubLN gains at 1: for a model trained from scratch or whose
            weights are loaded afterwards (as :func:`load_bitnet` does).

    Raises:
        UnsupportedModelError: (a TypeError) the model has no ``nn.Linear`` to convert.
        UserInputError: (a ValueError) ``insert_subln`` but none of ``subln_targets`` exists,
            or SubLN needs calibrating and neither batches nor a tokenizer are at hand.
    """
    config = BitNetConfig(**{**asdict(config or BitNetConfig()), **overrides})
    if not calibrate and calibration_batches is not None:
        raise UserInputError("calibrate=False and calibration_batches contradict each other; "
                             "drop one of them")
    targets = _quantizable_linears(model, config.exclude, config.fp_layers)
    if not targets:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no nn.Linear layers to convert (after excluding "
            f"{config.exclude} and fp_layers {config.fp_layers}); wrinklefree needs decoders "
            "whose projections are torch.nn.Linear (Llama, Qwen2/3, Mistral, ...). GPT-2-style "
            "Conv1D layers are not supported."
        )
    subln_names = [n for n, _ in targets if n.rpartition(".")[2] in config.subln_targets]
    if config.insert_subln and not subln_names:
        raise UserInputError(
            f"insert_subln=True but {type(model).__name__} has no linear named "
            f"{config.subln_targets}; pass subln_targets matching its output projections "
            "or insert_subln=False"
        )
    hadamard_names = [n for n, _ in targets if n.rpartition(".")[2] in config.hadamard_targets]
    if config.hadamard and not hadamard_names:
        raise ValueError(
            f"hadamard=True but {type(model).__name__} has no linear named "
            f"{config.hadamard_targets}; pass hadamard_targets matching its projections"
        )
    if config.insert_subln and calibrate and calibration_batches is None:
        calibration_batches = _builtin_calibration_batches(model, tokenizer,
                                                           num_calibration_batches)
    # SubLN shares the decoder's RMSNorm epsilon: llama.cpp's and transformers' BitNet
    # architectures have one epsilon for every norm, so exports stay faithful.
    subln_eps = float(getattr(getattr(model, "config", None), "rms_norm_eps", 1e-6))

    def to_bitlinear(name: str, linear: nn.Linear) -> BitLinear:
        layer = BitLinear.from_linear(
            linear,
            quant_lambda=config.quant_lambda,
            quantize_activations=config.quantize_activations,
            weight_quant=config.weight_quant,
            subln=config.insert_subln and name in subln_names,
            subln_eps=subln_eps,
            hadamard=config.hadamard and name in hadamard_names,
        )
        if layer.hadamard:  # W' = W·Hᵀ (H symmetric: rotate each row), so W'·(H·x) = W·x
            with torch.no_grad():
                layer.weight.copy_(fwht(layer.weight, layer.hadamard_block))
        return layer

    target_names = {name for name, _ in targets}
    replace_modules(model, lambda name, _: name in target_names, to_bitlinear)
    if config.fp_layers_subln:
        fp_names = {n for n, _ in _fp_layer_linears(model, config.fp_layers, config.subln_targets)}
        replace_modules(model, lambda name, _: name in fp_names,
                        lambda _, linear: SubLNLinear.from_linear(linear, subln_eps))
    if config.insert_subln and calibration_batches is not None:
        calibrate_subln(model, calibration_batches)
    if config.lrc_rank is not None:
        convert_bitlinear_to_lrc(model, config.lrc_rank, init=config.lrc_init)
    record_bitnet(model, config)
    return model


def convert_for_loading(model: nn.Module, options: BitNetConfig) -> nn.Module:
    """Convert a model whose weights are loaded afterwards (a checkpoint's architecture rebuilt,
    a classifier given a converted decoder): SubLN gains and LRC factors come with the weights,
    so the gains stay 1 and the factors skip their SVD initialisation on weights about to be
    replaced. ``options`` is recorded as given."""
    build = options if options.lrc_rank is None else replace(options, lrc_init="kaiming")
    convert_model_to_bitnet(model, build, calibrate=False)
    record_bitnet(model, options)
    return model


def _builtin_calibration_batches(model: nn.Module, tokenizer=None,
                                 num_batches: int = 4) -> list[dict]:
    """Calibration batches of the built-in ASV training text, tokenised by ``tokenizer`` or by
    the tokenizer saved beside the model; refuses (before the model changes) if there is none."""
    from wrinklefree.data.heldout import calibration_batches

    tokenizer = tokenizer if tokenizer is not None else _saved_tokenizer(model)
    if tokenizer is None:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        raise UserInputError(
            f"insert_subln=True needs calibrated SubLN gains (gains of 1 wreck a pretrained "
            f"model: perplexity ~16 -> millions) and no tokenizer was found for {name}; pass "
            "tokenizer=... (calibrates on the built-in ASV text), calibration_batches=[{"
            "'input_ids': ...}, ...], or calibrate=False for unit gains (a model trained from "
            "scratch, or weights loaded afterwards)"
        )
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    seq_len = min(256, max_positions or 256)
    return calibration_batches(tokenizer, num_batches=num_batches, seq_len=seq_len)


def _saved_tokenizer(model: nn.Module):
    """The tokenizer stored with the model's weights (a local folder or the hub cache; never
    the network), or None."""
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", "") or ""
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError):
        return None


@torch.no_grad()
def calibrate_subln(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Initialise each SubLN gain g by least squares so that g * x / rms(x) ≈ x.

    Per channel j over calibration tokens t: g_j = sum_t x_tj * u_tj / sum_t u_tj^2 with
    u_t = x_t / rms(x_t) (the minimiser of sum_t (x_tj - g_j u_tj)^2). An uncalibrated gain of 1
    rescales every projection input to unit RMS and wrecks a pretrained model (measured on SmolLM2:
    perplexity 31.6 -> ~5e6); the calibrated gain restores the average scale per channel. The norm
    sees the unnormalised input, so statistics are collected with the norms bypassed.
    """
    layers = [m for m in model.modules()
              if isinstance(m, BitLinear | SubLNLinear) and m.sub_norm is not None]
    sums = {id(m): [0.0, 0.0] for m in layers}
    saved = {id(m): m.sub_norm for m in layers}
    all_bitlinear = [m for m in model.modules() if isinstance(m, BitLinear)]
    lambdas = {id(m): m.quant_lambda for m in all_bitlinear}

    def hook(module: BitLinear, args: tuple) -> None:
        x = args[0].float().reshape(-1, module.in_features)  # (T, in)
        norm = saved[id(module)]
        u = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)  # (T, in)
        acc = sums[id(module)]
        acc[0] = acc[0] + (x * u).sum(0)
        acc[1] = acc[1] + u.pow(2).sum(0)

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        for m in all_bitlinear:  # calibrate the full-precision function
            m.quant_lambda = 0.0
        for m in layers:
            m.sub_norm = None
        was_training = model.training
        model.eval()
        for batch in batches:
            model(**batch, use_cache=False)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
        for m in layers:
            m.sub_norm = saved[id(m)]
        for m in all_bitlinear:
            m.quant_lambda = lambdas[id(m)]
    for m in layers:
        num, den = sums[id(m)]
        if isinstance(num, torch.Tensor):
            m.sub_norm.weight.copy_((num / den.clamp(min=1e-12)).to(m.sub_norm.weight.dtype))


def build_bitnet(hf_config, **model_kwargs) -> nn.Module:
    """The converted architecture an HF config records (``config.bitnet``), with fresh weights:
    load a state dict into it (as :func:`load_bitnet` does, or after sharded training)."""
    import transformers

    options = bitnet_config_of(hf_config)
    if options is None:
        raise ValueError(
            f"the config has no '{CONFIG_KEY}' entry: not a wrinklefree BitNet checkpoint; "
            "convert it first with `wf convert` or load it with transformers directly"
        )
    arch = (hf_config.architectures or [None])[0]
    model_cls = getattr(transformers, arch, None) if arch else None
    if model_cls is None:
        raise ValueError(f"unknown architecture {arch!r} in the config's 'architectures'")
    return convert_for_loading(model_cls._from_config(hf_config, **model_kwargs), options)


def damaged_weights(shard: Path, err: BaseException) -> UserInputError:
    """The error for a weights file that does not read back (safetensors' own message names
    neither the file nor a fix)."""
    reason = str(err).splitlines()[0][:200]
    return UserInputError(f"{shard} is damaged ({reason}): the weights file is incomplete or "
                          "corrupt (e.g. cut short by a kill or a full disk); write the model "
                          "again (`wf convert`, `wf train`) or restore the file from a copy")


def check_safetensors(folder: Path) -> None:
    """Refuse a model folder whose ``*.safetensors`` do not read back whole, naming the file,
    before a loader fails with a bare ``SafetensorError``; reads each file's header only."""
    from safetensors import safe_open

    for shard in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(shard, framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own error types
            raise damaged_weights(shard, err) from None


def load_bitnet(path: str | Path, *, torch_dtype: torch.dtype | None = None, **model_kwargs):
    """Load a model saved by ``save_pretrained`` after :func:`convert_model_to_bitnet`.

    Rebuilds the architecture from ``config.json``, converts it with the recorded options and
    loads the safetensors weights strictly (tied weights excepted).
    """
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder: no config.json found")
    hf_config = AutoConfig.from_pretrained(path)
    try:
        options = bitnet_config_of(hf_config)
    except ValueError as err:
        raise UserInputError(f"{path / 'config.json'} has a bad '{CONFIG_KEY}' entry: {err}; "
                             "fix it there or convert the source model again") from err
    if options is None:
        raise ValueError(
            f"{path} is not a wrinklefree BitNet checkpoint (config.json has no '{CONFIG_KEY}' "
            "entry); convert it first with `wf convert` or load it with transformers directly"
        )
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    try:
        model = build_bitnet(hf_config, **model_kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state.update(load_file(shard))
        except Exception as err:  # safetensors raises its own error types
            raise damaged_weights(shard, err) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the recorded architecture; "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.tie_weights()
    if (path / "generation_config.json").is_file():  # e.g. the repetition penalty of `wf train`
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()
