"""Objective weights that change over training: phases ending at fractions of the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Interpolation = Literal["step", "linear", "cosine"]


@dataclass
class CurriculumPhase:
    """Weights for one stretch of training, which ends at ``end_ratio`` × total_steps.

    ``objective_weights`` are absolute: an objective a phase does not name has weight 0 in it.
    ``data_config`` is passed through for the trainer (e.g. the name of a data mixture).
    """

    name: str
    end_ratio: float
    objective_weights: dict[str, float] = field(default_factory=dict)
    data_config: Any = None


class CurriculumScheduler:
    """Which phase and which weights apply at the current optimizer step.

    Phase p covers progress = step / total_steps in [end_{p-1}, end_p). With ``"step"`` its
    weights apply as they are; with ``"linear"`` or ``"cosine"`` they are reached at the end of
    the phase, moving from the previous phase's weights (linearly, or along a half cosine). The
    first phase and steps past the end use their phase's weights unchanged. Call :meth:`step`
    once per optimizer step.
    """

    def __init__(
        self,
        phases: list[CurriculumPhase],
        total_steps: int,
        interpolation: Interpolation = "step",
    ) -> None:
        if not phases:
            raise ValueError("a curriculum needs at least one phase")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if interpolation not in ("step", "linear", "cosine"):
            raise ValueError(
                f"interpolation must be 'step', 'linear' or 'cosine', got {interpolation!r}"
            )
        ends = [p.end_ratio for p in phases]
        if any(b <= a for a, b in zip([0.0, *ends], ends, strict=False)) or ends[-1] != 1.0:
            raise ValueError(
                f"phase end_ratio values {ends} must increase strictly within (0, 1] and the "
                "last must be 1.0"
            )
        for phase in phases:
            negative = {k: v for k, v in phase.objective_weights.items() if v < 0}
            if negative:
                raise ValueError(f"phase '{phase.name}' has negative weights {negative}")
        self.phases = list(phases)
        self.total_steps = int(total_steps)
        self.interpolation: Interpolation = interpolation
        self.current_step = 0

    def step(self) -> None:
        self.current_step += 1

    @property
    def progress(self) -> float:
        return self.current_step / self.total_steps

    @property
    def phase_index(self) -> int:
        for index, phase in enumerate(self.phases):
            if self.progress < phase.end_ratio:
                return index
        return len(self.phases) - 1

    @property
    def current_phase(self) -> CurriculumPhase:
        return self.phases[self.phase_index]

    def weights(self) -> dict[str, float]:
        """Weight of every objective named in any phase at the current step."""
        index = self.phase_index
        names = {name for phase in self.phases for name in phase.objective_weights}
        current = self.phases[index].objective_weights
        if self.interpolation == "step" or index == 0 or self.progress >= 1.0:
            return {name: float(current.get(name, 0.0)) for name in names}
        start, end = self.phases[index - 1].end_ratio, self.phases[index].end_ratio
        f = (self.progress - start) / (end - start)
        if self.interpolation == "cosine":
            f = 0.5 * (1.0 - math.cos(math.pi * f))
        previous = self.phases[index - 1].objective_weights
        return {
            name: (1 - f) * previous.get(name, 0.0) + f * current.get(name, 0.0) for name in names
        }

    def state_dict(self) -> dict[str, int]:
        return {"current_step": self.current_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the saved step (progress is measured against this scheduler's total)."""
        self.current_step = int(state["current_step"])
