"""The training configuration schema: what `wf train` accepts, with types and defaults.

Hydra composes the YAML files under ``configs/``; :func:`validate` merges the result into these
dataclasses and checks every key, type and range *before* anything is loaded, so a mistyped key,
a value of the wrong type or out of range is an error within seconds that names the key, the bad
value and the fix. ``data`` is checked against :class:`wrinklefree.data.config.DataConfig`;
``objectives`` and ``curriculum`` by :func:`wrinklefree.objectives.create_objective_manager`.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wrinklefree.convert import BitNetConfig
from wrinklefree.data.config import DataConfig
from wrinklefree.data.heldout import REPORT_WINDOWS
from wrinklefree.errors import UserInputError, did_you_mean


@dataclass
class ModelConfig:
    source: str = "smollm2"  # 'smollm2', a .gguf file, a HF folder or hub id, a BitNet checkpoint
    dtype: str = "float32"
    attn_implementation: str | None = None  # None = the model's default (sdpa)
    convert: BitNetConfig = field(default_factory=BitNetConfig)  # every conversion option, typed
    calibration_batches: int = 4  # SubLN calibration on ASV train windows (0 = unit gains)
    teacher: str | None = "source"  # 'source' = full-precision copy of the source; a path; None
    dlm: bool = False  # add the <|mask|> token (needed by the DLM / TCS objectives)
    train_only_lrc: bool = False  # freeze everything but the LRC factors (LRC calibration)


@dataclass
class LambdaConfig:
    warmup_steps: int = 0
    shape: str = "linear"
    start: float = 0.0
    end: float = 1.0


@dataclass
class ZClipConfig:
    enabled: bool = True
    alpha: float = 0.97
    z_thresh: float = 2.5
    warmup: int = 25
    max_norm: float | None = 1.0


@dataclass
class ReconstructConfig:
    """Layer-by-layer reconstruction before end-to-end training (train/reconstruct.py)."""

    epochs: int = 0  # passes over the calibration batches per decoder layer; 0 = skip the stage
    batches: int = 8  # calibration batches of training.batch_size windows, from the train data
    lr: float = 3e-3  # AdamW per layer, cosine to lr/10 (docs/benchmarks.md: 1e-3, 1e-2 worse)


@dataclass
class TrainingConfig:
    max_steps: int | None = 100
    max_tokens: int | None = None  # if set, overrides max_steps
    batch_size: int = 4
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | muon
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    scheduler: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_ratio: float = 0.2  # wsd: fraction of training spent decaying
    quant_lambda: LambdaConfig = field(default_factory=LambdaConfig)
    zclip: ZClipConfig = field(default_factory=ZClipConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    val_every: int = 50
    val_windows: int = 8
    checkpoint_every: int = 50
    keep_last: int = 2
    seed: int = 0
    # before/after report (train/run.py): perplexity on both evaluation domains (ASV held out,
    # general English) over eval_windows test windows each (other documents than the val_windows
    # validation windows, data/heldout.py), and greedy samples
    eval_windows: int = REPORT_WINDOWS
    # two in the ASV's style, two general English: a student that only learned the Bible's style
    # shows it on the last two
    sample_prompts: list[str] = field(default_factory=lambda: [
        "And God said,", "The history of the city", "Once upon a time,",
        "The best way to learn a language is"])
    sample_tokens: int = 24
    # != 1: the samples are decoded with CTRL's repetition penalty and the report adds the loop
    # measure under it; plain greedy loops are always measured (eval/report.py)
    sample_repetition_penalty: float = 1.0
    eval_before: bool = True  # report teacher / converted-student perplexity before training


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"  # auto | ddp | fsdp | a dict for FSDP options
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    activation_checkpointing: bool = False
    compile: bool = False


@dataclass
class LoggingConfig:
    wandb: bool = False
    project: str = "wrinklefree"
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class TrainConfig:
    name: str | None = None
    run_dir: str = "runs/${name}"
    resume: str | None = None  # auto | a checkpoint path
    overwrite: bool = False  # a fresh run may replace the run already in run_dir (else: refused)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    objectives: dict[str, Any] = field(default_factory=dict)
    curriculum: dict[str, Any] = field(default_factory=dict)  # {} = fixed objective weights
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def validate(config: DictConfig | dict) -> DictConfig:
    """Merge ``config`` into the schema and check it whole, before anything is loaded.

    Raises :class:`~wrinklefree.errors.UserInputError` naming the key, the bad value and the fix
    for: unknown keys (with the closest valid key; Hydra's ``+key`` adds a key the schema does
    not have, so it is refused here too), wrong types, unset mandatory values (``???``),
    out-of-range values and an explicit ``resume`` file that is not a wrinklefree checkpoint.
    """
    given = OmegaConf.to_container(config) if isinstance(config, DictConfig) else config
    problem = next(unknown_keys(given, TrainConfig), None)
    if problem is not None:
        raise UserInputError(problem)
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, config)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        raise UserInputError(describe_config_error(err)) from err
    plain = OmegaConf.to_container(merged)
    _check_data_types(plain.get("data") or {})
    _check_ranges(merged)
    _check_data(plain.get("data") or {})
    if merged.resume not in (None, "auto"):
        check_resume_checkpoint(Path(merged.resume).expanduser())
    return merged


def describe_config_error(err: BaseException) -> str:
    """One line for an OmegaConf/Hydra error: the key and the reason, found along the cause
    chain (Hydra wraps the useful error: "Error merging override training.max_steps=abc")."""
    found = err
    cause: BaseException | None = err
    while cause is not None:
        if getattr(cause, "full_key", None):
            found = cause
            break
        cause = cause.__cause__ or cause.__context__
    key = getattr(found, "full_key", None)
    message = (getattr(found, "msg", None) or str(found)).splitlines()[0]
    if type(found).__name__ == "MissingMandatoryValue" and key:
        return (f"config key '{key}' has no value (???); set it, e.g. "
                f"{_dotted(key)}=VALUE on the `wf train` command line")
    return f"bad config value at '{key}': {message}" if key else f"bad config: {message}"


def _dotted(key: str) -> str:
    """``sources[0].path`` -> ``sources.0.path`` (the form Hydra overrides take)."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


# ------------------------------------------------------------------ keys against the schema

# fields typed as an open mapping in TrainConfig whose content has a schema of its own
SUBSCHEMAS: dict[str, type] = {"data": DataConfig}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: SUBSCHEMAS.get(f.name, hints[f.name]) if cls is TrainConfig
            else hints[f.name] for f in dataclasses.fields(cls)}


def _structured(tp: Any) -> Any:
    """The dataclass or ``list[...]`` inside ``tp`` (``X | None`` -> X), else None: a leaf or an
    open mapping, below which any key is accepted."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    origin = typing.get_origin(tp)
    if origin is list:
        return tp
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if _structured(arg) is not None:
                return _structured(arg)
    return None


def unknown_keys(container: Any, tp: Any = TrainConfig, prefix: str = "") -> Iterator[str]:
    """A message for every key of ``container`` (plain dicts / lists) that ``tp`` lacks."""
    tp = _structured(tp)
    if tp is None:
        return
    if typing.get_origin(tp) is list:
        if isinstance(container, list):
            for i, item in enumerate(container):
                yield from unknown_keys(item, typing.get_args(tp)[0], f"{prefix}{i}.")
        return
    if not isinstance(container, dict):
        return
    fields = _field_types(tp)
    for key, value in container.items():
        if key in fields:
            yield from unknown_keys(value, fields[key], f"{prefix}{key}.")
        else:
            yield _unknown_key_message(f"{prefix}{key}", [f"{prefix}{k}" for k in fields])


def _unknown_key_message(key: str, candidates: list[str]) -> str:
    return (f"unknown config key '{key}'{did_you_mean(key, candidates)} "
            "(`wf train --print-config` lists every key)")


def check_override_key(key: str, groups: tuple[str, ...] = ()) -> None:
    """Refuse an override of a key the schema does not have (with or without Hydra's ``+``):
    ``training.max_stepz=3`` names ``training.max_steps``. Keys below open mappings
    (``objectives``, ``curriculum``) are accepted; their owners check them."""
    tp: Any = TrainConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        tp = _structured(tp)
        if tp is None:
            return
        if typing.get_origin(tp) is list:
            if not part.isdigit():
                raise UserInputError(f"config key '{key}': '{part}' must be a list index (0, 1, "
                                     "...)")
            tp = typing.get_args(tp)[0]
            continue
        fields = _field_types(tp)
        if part not in fields:
            names = list(fields) + (list(groups) if depth == 0 else [])
            match = did_you_mean(part, names)
            rest = ".".join(parts[depth + 1:])
            if match:  # suggest the whole corrected key, not just the segment
                fixed = ".".join([*parts[:depth], match.split("'")[1]] + ([rest] if rest else []))
                match = f"; did you mean '{fixed}'?"
            raise UserInputError(f"unknown config key '{key}'{match} (`wf train --print-config` "
                                 "lists every key)")
        tp = fields[part]


# ------------------------------------------------------------------ values

def _check_data_types(data: dict) -> None:
    """``data`` against DataConfig: unset values (``???``) and types (``data.seq_len=abc``);
    ``data`` is an open mapping in the Hydra schema, so nothing checked it so far."""
    key = next(missing_keys(data, "data."), None)
    if key is not None:
        raise UserInputError(f"config key '{key}' has no value (???); set it, e.g. "
                             f"{key}=VALUE on the `wf train` command line")
    try:
        OmegaConf.merge(OmegaConf.structured(DataConfig), data)
    except OmegaConfBaseException as err:
        if getattr(err, "full_key", None):
            err.full_key = f"data.{err.full_key}"
        raise UserInputError(describe_config_error(err)) from err


def _check_data(data: dict) -> None:
    """The rest of DataConfig.validate: sources, weights."""
    from wrinklefree.data.config import as_data_config

    try:
        as_data_config(data).validate()
    except ValueError as err:
        raise UserInputError(f"data: {err}") from err


def missing_keys(container: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys whose value is still OmegaConf's mandatory marker ``???``."""
    items = (container.items() if isinstance(container, dict)
             else enumerate(container) if isinstance(container, list) else ())
    for key, value in items:
        if value == "???":
            yield f"{prefix}{key}"
        else:
            yield from missing_keys(value, f"{prefix}{key}.")


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


# key, test, what it must be (the fix); checked in this order, before any model is loaded
RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("training.max_steps", lambda v: v is None or v >= 0,
     "an integer >= 0 (0 = convert only) or null with training.max_tokens set"),
    ("training.max_tokens", lambda v: v is None or v >= 1, "an integer >= 1, or null"),
    ("training.batch_size", _at_least(1), "an integer >= 1"),
    ("training.grad_accum", _at_least(1), "an integer >= 1 (batches per optimizer step)"),
    ("training.val_every", _at_least(1), "an integer >= 1 (steps between validations)"),
    ("training.checkpoint_every", _at_least(1), "an integer >= 1 (steps between checkpoints)"),
    ("training.val_windows", _at_least(1), "an integer >= 1"),
    ("training.eval_windows", _at_least(1), "an integer >= 1 (test windows per domain)"),
    ("training.keep_last", _at_least(-1), "an integer >= -1 (-1 keeps every checkpoint)"),
    ("training.lr", lambda v: v > 0 and math.isfinite(v), "a number > 0"),
    ("training.weight_decay", _at_least(0), "a number >= 0"),
    ("training.warmup_steps", _at_least(0), "an integer >= 0"),
    ("training.min_lr_ratio", _unit, "a number in [0, 1]"),
    ("training.decay_ratio", _unit, "a number in [0, 1]"),
    ("training.quant_lambda.start", _unit, "a number in [0, 1] (0 = full precision)"),
    ("training.quant_lambda.end", _unit, "a number in [0, 1] (1 = ternary)"),
    ("training.quant_lambda.warmup_steps", _at_least(0), "an integer >= 0"),
    ("training.sample_tokens", _at_least(0), "an integer >= 0"),
    ("training.sample_repetition_penalty", lambda v: v > 0 and math.isfinite(v),
     "a number > 0 (1 = off, 1.2 = CTRL's)"),
    ("training.reconstruct.epochs", _at_least(0), "an integer >= 0 (0 = no reconstruction)"),
    ("training.reconstruct.batches", _at_least(1), "an integer >= 1"),
    ("training.reconstruct.lr", lambda v: v > 0 and math.isfinite(v), "a number > 0"),
    ("model.calibration_batches", _at_least(0), "an integer >= 0 (0 = SubLN gains of 1)"),
    ("model.convert.quant_lambda", _unit, "a number in [0, 1]"),
    ("model.dtype", lambda v: v in ("float32", "bfloat16", "float16"),
     "one of float32, bfloat16, float16"),
    ("trainer.num_nodes", _at_least(1), "an integer >= 1"),
    ("data.seq_len", _at_least(2), "an integer >= 2 (tokens per training window)"),
    ("data.shard_docs", _at_least(1), "an integer >= 1"),
]


def _default_of(key: str) -> Any:
    """The schema's default for a dotted key (``data.*`` from DataConfig)."""
    if key.startswith("data."):
        return OmegaConf.select(OmegaConf.structured(DataConfig), key.removeprefix("data."))
    return OmegaConf.select(OmegaConf.structured(TrainConfig), key)


def _check_ranges(cfg: DictConfig) -> None:
    for key, ok, requirement in RANGES:
        default = _default_of(key)
        value = OmegaConf.select(cfg, key, default=default)
        if not ok(value):
            raise UserInputError(f"{key}={value} is out of range: it must be {requirement}; "
                                 f"e.g. {key}={default}")
    t = cfg.training
    if t.max_steps is None and t.max_tokens is None:
        raise UserInputError("training.max_steps and training.max_tokens are both null: set one "
                             "(e.g. training.max_steps=100)")


def check_resume_checkpoint(path: Path) -> None:
    """Refuse an explicit ``resume=`` file that is not a checkpoint this trainer wrote, before
    the model loads: it is opened with ``weights_only=True`` (a malicious pickle cannot run) and
    must hold Lightning's ``state_dict`` and ``loops``. Folders (sharded FSDP checkpoints) and
    missing files are left to the trainer, which reports them."""
    if not path.is_file():
        return
    import zipfile

    import torch

    try:
        if not zipfile.is_zipfile(path):
            raise pickle.UnpicklingError("not the zip archive torch.save writes")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0][:200]
        if reason.startswith("Weights only load failed"):
            reason = "it holds Python objects beyond tensors and plain data; not unpickled"
        raise UserInputError(
            f"resume={path} is not a wrinklefree/Lightning checkpoint ({reason}); pass a .ckpt "
            "from a run's checkpoints/ folder, or resume=auto"
        ) from err
    if not isinstance(state, dict) or not {"state_dict", "loops"} <= set(state):
        raise UserInputError(
            f"resume={path} is not a wrinklefree/Lightning checkpoint (no state_dict/loops); "
            "pass a .ckpt from a run's checkpoints/ folder, or resume=auto"
        )


SECRET_KEY = re.compile(r"(^|_)(api_key|token|secret|password)$", re.IGNORECASE)


def scrub_secrets(container: Any) -> Any:
    """A copy of a plain config container with secret-looking keys' values replaced."""
    if isinstance(container, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v else scrub_secrets(v)
                for k, v in container.items()}
    if isinstance(container, list):
        return [scrub_secrets(v) for v in container]
    return container
