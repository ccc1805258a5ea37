"""Combine objectives with weights (fixed or from a curriculum) into one loss.

The rules that matter: an objective whose weight is 0 at the current step is not run at all,
neither its loss nor its batch preprocessing; and the AR objectives (CE, logits KD, attention
relations, layerwise) always read the clean window, whatever the weights. (The system this
replaces masked and doubled the batch for DLM during a CE-only warm-up and in every ramp, so CE
trained on masked input and read 20-41 instead of 2-5.) DLM keeps the clean window in
``input_ids`` and puts its noisy copies beside it (``dlm_noisy_ids``); :meth:`forward` checks
that an AR objective is never handed a masked or doubled input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wrinklefree.objectives.base import Batch, Objective, ObjectiveOutput, Requirements
from wrinklefree.objectives.curriculum import CurriculumPhase, CurriculumScheduler


@dataclass
class ManagerOutput:
    """The weighted total loss, each active objective's output and the weights of every one."""

    loss: torch.Tensor
    objective_outputs: dict[str, ObjectiveOutput]
    weights_used: dict[str, float]
    phase_index: int = 0

    @property
    def metrics(self) -> dict[str, float]:
        """Flat floats for logging: ``loss``, ``<objective>/loss``, ``<objective>/<metric>``,
        ``weight/<objective>``, ``curriculum/phase``."""
        out = {"loss": float(self.loss.detach())}
        for name, result in self.objective_outputs.items():
            out[f"{name}/loss"] = float(result.loss.detach())
            for key, value in result.metrics.items():
                out[f"{name}/{key}"] = float(value)
        for name, weight in self.weights_used.items():
            out[f"weight/{name}"] = float(weight)
        out["curriculum/phase"] = float(self.phase_index)
        return out


class ObjectiveManager:
    """Runs the objectives that are active (weight > 0) at the current step.

    Per training step::

        batch = manager.preprocess_batch(batch)
        batch = manager.write_rows(batch, student)  # on-policy objectives only
        req = manager.requirements()
        out = run_model(student, batch, req)
        t_out = teacher(batch, req) if req.teacher else None
        result = manager(out, batch, t_out)
        result.loss.backward()
        ...optimizer step...
        manager.step()

    Args:
        objectives: the objectives (a sequence, keyed by their ``name``, or a name → objective map).
        weights: weight per objective name when there is no curriculum (missing names: 1.0).
        curriculum: per-step weights; it names objectives absolutely (unnamed → 0).
    """

    def __init__(
        self,
        objectives: Sequence[Objective] | Mapping[str, Objective],
        weights: Mapping[str, float] | None = None,
        curriculum: CurriculumScheduler | None = None,
    ) -> None:
        if isinstance(objectives, Mapping):
            named = dict(objectives)
        else:
            named = {}
            for objective in objectives:
                if objective.name in named:
                    raise ValueError(f"objective '{objective.name}' is given twice")
                named[objective.name] = objective
        if not named:
            raise ValueError("ObjectiveManager needs at least one objective")
        self.objectives: dict[str, Objective] = named
        weights = dict(weights or {})
        self._check_names(weights, "weights")
        self.base_weights = {name: float(weights.get(name, 1.0)) for name in named}
        negative = {k: v for k, v in self.base_weights.items() if v < 0}
        if negative:
            raise ValueError(f"objective weights must be >= 0, got {negative}")
        if curriculum is not None:
            for phase in curriculum.phases:
                self._check_names(phase.objective_weights, f"curriculum phase '{phase.name}'")
        self.curriculum = curriculum
        self._last: ManagerOutput | None = None

    def _check_names(self, names: Mapping[str, Any], where: str) -> None:
        unknown = sorted(set(names) - set(self.objectives))
        if unknown:
            raise ValueError(
                f"{where} name unknown objective(s) {unknown}; configured objectives: "
                f"{sorted(self.objectives)}"
            )

    def block_size(self) -> int | None:
        """The diffusion block size of the objectives that mask blocks (DLM, certainty forcing):
        the one the student learns to decode with; None without such an objective."""
        sizes = {o.block_size for o in self.objectives.values()
                 if o.modifies_input and getattr(o, "block_size", None) is not None}
        if len(sizes) > 1:
            raise ValueError(f"the masking objectives train different block sizes {sorted(sizes)}; "
                             "a student decodes with one: give them the same block_size")
        return next(iter(sizes), None)

    def current_weights(self) -> dict[str, float]:
        """Weight of every objective at the current step."""
        if self.curriculum is None:
            return dict(self.base_weights)
        scheduled = self.curriculum.weights()
        return {name: scheduled.get(name, 0.0) for name in self.objectives}

    def active(self) -> dict[str, float]:
        """Name → weight of the objectives with weight > 0 now, in configuration order."""
        return {name: w for name, w in self.current_weights().items() if w > 0}

    def requirements(self) -> Requirements:
        needs = Requirements()
        for name in self.active():
            needs = needs.merge(self.objectives[name].requirements())
        return needs

    def preprocess_batch(self, batch: Batch) -> Batch:
        """The batch the model should see; untouched unless an active objective modifies it."""
        for name in self.active():
            objective = self.objectives[name]
            if objective.modifies_input:
                batch = objective.preprocess_batch(batch)
        return batch

    def write_rows(self, batch: Batch, student: Any) -> Batch:
        """The batch with the rows that active on-policy objectives have the student write (after
        :meth:`preprocess_batch`, before the forward); untouched without one."""
        for name in self.active():
            objective = self.objectives[name]
            if objective.writes_rows:
                batch = objective.write(batch, student)
        return batch

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ManagerOutput:
        weights = self.current_weights()
        active = {name: w for name, w in weights.items() if w > 0}
        if not active:
            raise ValueError(
                f"no objective has weight > 0 at step {self.step_count} (weights {weights}); "
                "check the objective weights and curriculum phases"
            )
        if any(not self.objectives[name].reads_noisy_view for name in active):
            self._check_clean_view(model_outputs, batch)
        outputs: dict[str, ObjectiveOutput] = {}
        total = None
        for name, weight in active.items():
            outputs[name] = self.objectives[name](model_outputs, batch, teacher_outputs)
            term = weight * outputs[name].loss
            total = term if total is None else total + term
        self._last = ManagerOutput(total, outputs, weights, self.phase_index)
        return self._last

    __call__ = forward

    def _mask_token_ids(self) -> set[int]:
        return {
            int(obj.mask_token_id)
            for obj in self.objectives.values()
            if getattr(obj, "mask_token_id", None) is not None
        }

    def _check_clean_view(self, model_outputs: Any, batch: Batch) -> None:
        """Refuse to run an AR objective on masked or doubled input (the seed system's defect).

        ``input_ids`` must hold no mask token and the logits must be one row per window; both
        hold by construction (run_model returns the clean view as ``logits``), this is the guard
        that keeps it so whatever the weights and whoever builds the batch.
        """
        input_ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if input_ids is None:
            return
        masked = [m for m in self._mask_token_ids() if bool((input_ids == m).any())]
        if masked:
            raise ValueError(
                f"batch['input_ids'] contains the DLM mask token {masked[0]}: the AR objectives "
                "(CE, KD, attention, layerwise) must read the clean window; keep the masked "
                "copies in batch['dlm_noisy_ids'] (DLMObjective.preprocess_batch does)"
            )
        logits = getattr(model_outputs, "logits", None)
        if logits is not None and tuple(logits.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(
                f"model logits {tuple(logits.shape[:2])} do not match the clean window "
                f"{tuple(input_ids.shape)}: call the model through run_model(model, batch, "
                "manager.requirements()), which returns the clean view as .logits"
            )

    def step(self) -> None:
        """Advance the curriculum by one optimizer step."""
        if self.curriculum is not None:
            self.curriculum.step()

    @property
    def step_count(self) -> int:
        return 0 if self.curriculum is None else self.curriculum.current_step

    @property
    def phase_index(self) -> int:
        return 0 if self.curriculum is None else self.curriculum.phase_index

    @property
    def current_phase(self) -> CurriculumPhase:
        """The curriculum phase now (its ``name`` and ``data_config`` drive the data mixture);
        without a curriculum a single phase named ``constant`` holding the fixed weights."""
        if self.curriculum is None:
            return CurriculumPhase("constant", 1.0, dict(self.base_weights))
        return self.curriculum.current_phase

    def metrics(self) -> dict[str, float]:
        """Metrics of the last :meth:`forward`, or the current weights if none ran yet."""
        if self._last is not None:
            return self._last.metrics
        out = {f"weight/{name}": w for name, w in self.current_weights().items()}
        out["curriculum/phase"] = float(self.phase_index)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": None if self.curriculum is None else self.curriculum.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("curriculum")
        if (saved is None) != (self.curriculum is None):
            raise ValueError(
                "checkpoint and configuration disagree on whether there is a curriculum; "
                "resume with the configuration the checkpoint was trained with"
            )
        if self.curriculum is not None:
            self.curriculum.load_state_dict(saved)

    def __repr__(self) -> str:
        lines = [
            f"  {obj!r} weight={self.base_weights[name]:g}" for name, obj in self.objectives.items()
        ]
        return (
            "ObjectiveManager(\n"
            + "\n".join(lines)
            + f"\n  curriculum={self.curriculum is not None})"
        )
