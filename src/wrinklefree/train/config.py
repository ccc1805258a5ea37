"""The training configuration schema: what `wf train` accepts, with types and defaults.

Hydra composes the YAML files under ``configs/``; :func:`validate` merges the result into these
dataclasses and checks every key, type and range *before* anything is loaded, so a mistyped key,
a value of the wrong type or out of range is an error within seconds that names the key, the bad
value and the fix. Each range is declared next to its field (``metadata=at_least(1)``, checked
by :func:`wrinklefree.errors.check_ranges`); ``data`` is a :class:`~wrinklefree.data.config.
DataConfig`, which checks itself (``validate``); ``objectives`` and ``curriculum`` are checked by
:func:`wrinklefree.objectives.create_objective_manager`.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wrinklefree.data.config import DataConfig
from wrinklefree.data.heldout import REPORT_WINDOWS
from wrinklefree.errors import (
    UserInputError,
    at_least,
    check_ranges,
    did_you_mean,
    in_range,
    positive,
    unit_interval,
)
from wrinklefree.export.gguf import GGUFOptions
from wrinklefree.nn.surgery import BitNetConfig

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    source: str = "smollm2"  # 'smollm2', a .gguf file, a HF folder or hub id, a BitNet checkpoint
    dtype: str = field(default="float32", metadata=in_range(
        lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"))
    attn_implementation: str | None = None  # None = the model's default (sdpa)
    convert: BitNetConfig = field(default_factory=BitNetConfig)  # every conversion option, typed
    # SubLN calibration on ASV train windows
    calibration_batches: int = field(default=4, metadata=at_least(0, "(0 = SubLN gains of 1)"))
    teacher: str | None = "source"  # 'source' = full-precision copy of the source; a path; None
    dlm: bool = False  # add the <|mask|> token (needed by the DLM / TCS objectives)
    train_only_lrc: bool = False  # freeze everything but the LRC factors (LRC calibration)
    # the GGUF types the student ships at (the `wf export` flags' names): with
    # training.gguf_round_at set, the parts llama.cpp quantizes (embeddings, fp_layers, LRC)
    # are rounded to them and frozen, so the report scores the file `wf export` writes (and its
    # default types become these)
    gguf: GGUFOptions = field(default_factory=GGUFOptions)


@dataclass
class LambdaConfig:
    warmup_steps: int = field(default=0, metadata=at_least(0))
    shape: str = "linear"
    start: float = field(default=0.0, metadata=unit_interval("(0 = full precision)"))
    end: float = field(default=1.0, metadata=unit_interval("(1 = ternary)"))


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

    # passes over the calibration batches per decoder layer; 0 = skip the stage
    epochs: int = field(default=0, metadata=at_least(0, "(0 = no reconstruction)"))
    # calibration batches of training.batch_size windows, from the train data
    batches: int = field(default=8, metadata=at_least(1))
    # AdamW per layer, cosine to lr/10 (docs/benchmarks.md: 1e-3, 1e-2 worse)
    lr: float = field(default=3e-3, metadata=positive())


@dataclass
class TrainingConfig:
    max_steps: int | None = field(default=100, metadata=in_range(
        lambda v: v is None or v >= 0,
        "an integer >= 0 (0 = convert only) or null with training.max_tokens set"))
    # if set, overrides max_steps
    max_tokens: int | None = field(default=None, metadata=in_range(
        lambda v: v is None or v >= 1, "an integer >= 1, or null"))
    batch_size: int = field(default=4, metadata=at_least(1))
    grad_accum: int = field(default=1, metadata=at_least(1, "(batches per optimizer step)"))
    optimizer: str = "adamw"  # adamw | muon
    lr: float = field(default=5e-4, metadata=positive())
    weight_decay: float = field(default=0.0, metadata=at_least(0, kind="a number"))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    scheduler: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = field(default=0, metadata=at_least(0))
    min_lr_ratio: float = field(default=0.1, metadata=unit_interval())
    # wsd: fraction of training spent decaying
    decay_ratio: float = field(default=0.2, metadata=unit_interval())
    quant_lambda: LambdaConfig = field(default_factory=LambdaConfig)
    zclip: ZClipConfig = field(default_factory=ZClipConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    val_every: int = field(default=50, metadata=at_least(1, "(steps between validations)"))
    val_windows: int = field(default=8, metadata=at_least(1))
    checkpoint_every: int = field(default=50, metadata=at_least(1, "(steps between checkpoints)"))
    keep_last: int = field(default=2, metadata=at_least(-1, "(-1 keeps every checkpoint)"))
    # save the student as a model folder (snapshots/step-N, like final/) every N steps: a curve
    # of quality or decoding speed against tokens from one run; null = none
    snapshot_every: int | None = field(default=None, metadata=in_range(
        lambda v: v is None or v >= 1, "an integer >= 1 (steps between snapshots), or null"))
    seed: int = 0
    # before/after report (train/run.py): perplexity on both evaluation domains (ASV held out,
    # general English) over eval_windows test windows each (other documents than the val_windows
    # validation windows, data/heldout.py), and greedy samples
    eval_windows: int = field(default=REPORT_WINDOWS,
                              metadata=at_least(1, "(test windows per domain)"))
    # two in the ASV's style, two general English: a student that only learned the Bible's style
    # shows it on the last two
    sample_prompts: list[str] = field(default_factory=lambda: [
        "And God said,", "The history of the city", "Once upon a time,",
        "The best way to learn a language is"])
    sample_tokens: int = field(default=24, metadata=at_least(0))
    # != 1: the samples are decoded with CTRL's repetition penalty and the report adds the loop
    # measure under it; plain greedy loops are always measured (eval/report.py)
    sample_repetition_penalty: float = field(default=1.0,
                                             metadata=positive("(1 = off, 1.2 = CTRL's)"))
    eval_before: bool = True  # report teacher / converted-student perplexity before training
    # the fraction of the run after which the parts llama.cpp quantizes are rounded to the
    # model.gguf types and frozen (the rest trains the ternary weights and norms around them;
    # 1 = at the end); null = they stay float
    gguf_round_at: float | None = field(default=None, metadata=in_range(
        lambda v: v is None or 0 <= v <= 1, "a number in [0, 1], or null (no rounding)"))


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = field(default=1, metadata=at_least(1))
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
    data: DataConfig = field(default_factory=DataConfig)
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
    key = next(missing_keys(OmegaConf.to_container(merged)), None)
    if key is not None:
        raise UserInputError(f"config key '{key}' has no value (???); set it, e.g. "
                             f"{key}=VALUE on the `wf train` command line")
    check_ranges(merged, TrainConfig)
    t = merged.training
    if t.max_steps is None and t.max_tokens is None:
        raise UserInputError("training.max_steps and training.max_tokens are both null: set one "
                             "(e.g. training.max_steps=100)")
    try:  # GGUFOptions checks its types when it is built
        OmegaConf.to_object(merged.model.gguf)
    except UserInputError as err:
        raise UserInputError(f"model.gguf: {err} (the `wf export` flag of the same name)"
                             ) from None
    try:  # the one check of the data section; the run converts it with OmegaConf.to_object
        OmegaConf.to_object(merged.data).validate(prefix="data.")
    except UserInputError:
        raise
    except ValueError as err:
        raise UserInputError(f"data: {err}") from err
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

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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

def missing_keys(container: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys whose value is still OmegaConf's mandatory marker ``???``."""
    items = (container.items() if isinstance(container, dict)
             else enumerate(container) if isinstance(container, list) else ())
    for key, value in items:
        if value == "???":
            yield f"{prefix}{key}"
        else:
            yield from missing_keys(value, f"{prefix}{key}.")


RESUME_FIX = "pass a .ckpt from a run's checkpoints/ folder, or resume=auto"


def check_resume_checkpoint(path: Path, what: str | None = None, fix: str = RESUME_FIX) -> None:
    """Refuse a checkpoint to resume from (``what``, default ``resume=<path>``) that this trainer
    did not write, before the model loads or anything is written: it is opened with
    ``weights_only=True`` (a malicious pickle cannot run, and torch's advice to load it unsafely
    is never shown) and must hold Lightning's ``state_dict`` and ``loops``. Folders (sharded FSDP
    checkpoints) and missing files are left to the trainer, which reports them."""
    what = what or f"resume={path}"
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
        # from None: torch's own message advises the unsafe full-pickle load; never repeat it
        raise UserInputError(
            f"{what} is not a wrinklefree/Lightning checkpoint ({reason}); {fix}") from None
    if not isinstance(state, dict) or not {"state_dict", "loops"} <= set(state):
        raise UserInputError(
            f"{what} is not a wrinklefree/Lightning checkpoint (no state_dict/loops); {fix}")


SECRET_KEY = re.compile(r"(^|_)(api_key|token|secret|password)$", re.IGNORECASE)


def scrub_secrets(container: Any) -> Any:
    """A copy of a plain config container with secret-looking keys' values replaced."""
    if isinstance(container, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v else scrub_secrets(v)
                for k, v in container.items()}
    if isinstance(container, list):
        return [scrub_secrets(v) for v in container]
    return container
