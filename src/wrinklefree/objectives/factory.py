"""Build an :class:`ObjectiveManager` from a (Hydra) configuration."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from wrinklefree.objectives.attention import (
    AttentionRelationDistillObjective,
    BlockAttentionDistillObjective,
)
from wrinklefree.objectives.base import Objective
from wrinklefree.objectives.certainty import CertaintyForcingObjective
from wrinklefree.objectives.continue_pretrain import ContinuePretrainObjective
from wrinklefree.objectives.curriculum import CurriculumPhase, CurriculumScheduler
from wrinklefree.objectives.dlm import DLMObjective
from wrinklefree.objectives.layerwise import LayerwiseDistillObjective, LRCReconstructionObjective
from wrinklefree.objectives.logits_distill import LogitsDistillObjective
from wrinklefree.objectives.manager import ObjectiveManager
from wrinklefree.objectives.on_policy import OnPolicyDistillObjective
from wrinklefree.objectives.repetition import RepetitionObjective
from wrinklefree.objectives.tcs import TCSDistillObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        ContinuePretrainObjective,
        DLMObjective,
        CertaintyForcingObjective,
        LogitsDistillObjective,
        AttentionRelationDistillObjective,
        BlockAttentionDistillObjective,
        TCSDistillObjective,
        LayerwiseDistillObjective,
        LRCReconstructionObjective,
        RepetitionObjective,
        OnPolicyDistillObjective,
    )
}

RUNTIME_ARGUMENTS = ("tokenizer",)  # passed by code, never from a config file
PHASE_KEYS = ("name", "end_ratio", "objective_weights", "data_config")


def _plain(config: Any) -> Any:
    """A DictConfig / ListConfig as plain dicts and lists (resolved), anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a pinned dependency
        return config
    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _options(cls: type[Objective]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and p not in RUNTIME_ARGUMENTS]


def _check_keys(given: Mapping[str, Any], valid: list[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(valid)}")


def build_objective(
    name: str, options: Mapping[str, Any] | None, *, tokenizer: Any = None
) -> Objective:
    """One objective from its config name and options (``weight`` excluded)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; valid objectives: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    options = dict(options or {})
    _check_keys(options, _options(cls), f"objective '{name}'")
    if tokenizer is not None and "tokenizer" in inspect.signature(cls.__init__).parameters:
        options["tokenizer"] = tokenizer
    return cls(**options)


def create_objective_manager(
    config: Mapping[str, Any] | Any, total_steps: int | None = None, *, tokenizer: Any = None
) -> ObjectiveManager:
    """Build the manager from ``{objectives: {name: {weight, ...options}}, curriculum: ...}``.

    ``curriculum`` is optional (``{interpolation: step|linear|cosine, phases: [{name, end_ratio,
    objective_weights, data_config}]}``) and needs ``total_steps``. Other top-level keys are
    ignored, so a larger training config can be passed as is. ``tokenizer`` lets DLM look up and
    check the mask token.

    Raises:
        ValueError: an unknown objective name or option key (naming the valid ones), a phase
            naming an objective that is not configured, or a curriculum without ``total_steps``.
    """
    config = _plain(config) or {}
    objectives_config = config.get("objectives") or {}
    if not objectives_config:
        raise ValueError(
            f"the config has no objectives; add e.g. objectives: {{continue_pretrain: "
            f"{{weight: 1.0}}}} (valid objectives: {sorted(OBJECTIVES)})"
        )
    objectives, weights = [], {}
    for name, options in objectives_config.items():
        options = dict(options or {})
        weights[name] = float(options.pop("weight", 1.0))
        objectives.append(build_objective(name, options, tokenizer=tokenizer))
    curriculum = _build_curriculum(config.get("curriculum"), total_steps)
    return ObjectiveManager(objectives, weights, curriculum)


def _build_curriculum(
    config: Mapping[str, Any] | None, total_steps: int | None
) -> CurriculumScheduler | None:
    if not config or not config.get("phases"):
        return None
    _check_keys(config, ("interpolation", "phases"), "curriculum")
    if total_steps is None:
        raise ValueError(
            "a curriculum needs total_steps: create_objective_manager(cfg, total_steps)"
        )
    phases = []
    for index, phase in enumerate(config["phases"]):
        _check_keys(phase, PHASE_KEYS, f"curriculum phase {index}")
        missing = [k for k in ("name", "end_ratio") if k not in phase]
        if missing:
            raise ValueError(f"curriculum phase {index} is missing {missing}")
        phases.append(
            CurriculumPhase(
                name=str(phase["name"]),
                end_ratio=float(phase["end_ratio"]),
                objective_weights={
                    k: float(v) for k, v in (phase.get("objective_weights") or {}).items()
                },
                data_config=phase.get("data_config"),
            )
        )
    return CurriculumScheduler(phases, total_steps, config.get("interpolation", "step"))
