"""Schedules for the quantization strength lambda (0 = full precision, 1 = ternary)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Shape = Literal["linear", "cosine", "sigmoid", "constant"]


@dataclass
class LambdaWarmup:
    """lambda(step) rising from ``start`` to ``end`` over ``warmup_steps`` optimizer steps.

    Shapes: ``linear``; ``cosine`` (half-cosine ease-in-out); ``sigmoid`` (logistic centred on the
    middle of the warm-up, steepness ``sharpness``, rescaled to hit start and end exactly);
    ``constant`` (always ``end``).
    """

    warmup_steps: int
    shape: Shape = "linear"
    start: float = 0.0
    end: float = 1.0
    sharpness: float = 10.0

    def __post_init__(self) -> None:
        if self.shape not in ("linear", "cosine", "sigmoid", "constant"):
            raise ValueError(
                f"unknown lambda warm-up shape '{self.shape}'; "
                "use linear, cosine, sigmoid or constant"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def progress(self, step: int) -> float:
        """Fraction in [0, 1] of the warm-up shape reached at ``step``."""
        if self.shape == "constant" or self.warmup_steps == 0:
            return 1.0
        t = min(max(step / self.warmup_steps, 0.0), 1.0)
        if self.shape == "linear":
            return t
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * t))
        lo = 1.0 / (1.0 + math.exp(self.sharpness / 2))
        hi = 1.0 / (1.0 + math.exp(-self.sharpness / 2))
        return (1.0 / (1.0 + math.exp(-self.sharpness * (t - 0.5))) - lo) / (hi - lo)

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self.progress(step)
