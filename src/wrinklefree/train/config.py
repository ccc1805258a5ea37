"""The training configuration schema: what `wf train` accepts, with types and defaults.

Hydra composes the YAML files under ``configs/``; :func:`validate` merges the result into these
dataclasses, so a mistyped key or a value of the wrong type is an error that names the key.
``objectives`` and ``curriculum`` are checked by
:func:`wrinklefree.objectives.create_objective_manager` and ``data`` by
:class:`wrinklefree.data.config.DataConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wrinklefree.convert import BitNetConfig


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
    val_every: int = 50
    val_windows: int = 8
    checkpoint_every: int = 50
    keep_last: int = 2
    seed: int = 0
    sample_prompt: str = "And God said,"
    sample_tokens: int = 24
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
    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    objectives: dict[str, Any] = field(default_factory=dict)
    curriculum: dict[str, Any] = field(default_factory=dict)  # {} = fixed objective weights
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def validate(config: DictConfig | dict) -> DictConfig:
    """Merge ``config`` into the schema; unknown keys and wrong types raise ValueError."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, config)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        message = getattr(err, "msg", None) or str(err)
        raise ValueError(f"bad training config at '{key}': {message}") from err
    return merged


SECRET_KEY = re.compile(r"(^|_)(api_key|token|secret|password)$", re.IGNORECASE)


def scrub_secrets(container: Any) -> Any:
    """A copy of a plain config container with secret-looking keys' values replaced."""
    if isinstance(container, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v else scrub_secrets(v)
                for k, v in container.items()}
    if isinstance(container, list):
        return [scrub_secrets(v) for v in container]
    return container
