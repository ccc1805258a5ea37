"""Optimizers, learning-rate schedules and ZClip gradient clipping for the trainer."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on 2-D hidden weight matrices, AdamW on everything else, as one optimizer.

    Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises each update of a weight matrix and
    is only defined for matrices, so embeddings, heads, norms and biases use AdamW. Wrapping both
    in one optimizer keeps Lightning's automatic optimization, accumulation and LR schedulers.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        self.param_groups = muon.param_groups + adamw.param_groups  # shared dicts: LR follows
        self.defaults = {}
        self.state = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def _is_hidden_matrix(name: str, param: nn.Parameter, model: nn.Module) -> bool:
    embeddings = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        embeddings.add(id(head.weight))
    return param.ndim == 2 and id(param) not in embeddings and "score" not in name


def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel applies: plain float tensors on one CPU or CUDA device.

    On CPU it makes the optimizer step ~6x cheaper than the per-parameter loop (bench/
    train_speed.py); sharded (DTensor) parameters keep the default implementation.
    """
    from torch.distributed.tensor import DTensor

    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() and not isinstance(p, DTensor) for p in params))


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, betas: Iterable[float]
) -> torch.optim.Optimizer:
    """``adamw``, or ``muon`` (Muon for hidden matrices + AdamW for the rest), over trainable
    parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    betas = tuple(betas)
    if name == "adamw":
        params = [p for _, p in named]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas,
                                 fused=can_fuse(params))
    if name == "muon":
        hidden = [p for n, p in named if _is_hidden_matrix(n, p, model)]
        rest = [p for n, p in named if not _is_hidden_matrix(n, p, model)]
        muon = torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay,
                                adjust_lr_fn="match_rms_adamw")
        rest = rest or [torch.zeros(1, requires_grad=True)]
        adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, betas=betas,
                                  fused=can_fuse(rest))
        return MuonWithAdamW(muon, adamw)
    raise ValueError(f"unknown optimizer '{name}'; use adamw or muon")


def lr_multiplier(step: int, schedule: str, total: int, warmup: int, decay_ratio: float = 0.2,
                  min_ratio: float = 0.1) -> float:
    """LR factor at ``step``: linear warm-up, then ``constant``, ``cosine`` decay to ``min_ratio``
    (Loshchilov & Hutter 2017, Eq. 5), or ``wsd`` (warm-up, stable, then linear decay over the last
    ``decay_ratio`` of training; Hu et al. 2024, MiniCPM Eq. 1)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "wsd":
        decay_start = total - int(decay_ratio * total)
        if step < decay_start:
            return 1.0
        t = min((step - decay_start) / max(total - decay_start, 1), 1.0)
        return 1.0 - (1.0 - min_ratio) * t
    raise ValueError(f"unknown lr schedule '{schedule}'; use cosine, wsd or constant")


class ZClip:
    """Adaptive z-score gradient clipping (Kumar et al. 2025, ZClip, arXiv 2504.02507, Alg. 1).

    Tracks an EMA mean mu and variance s^2 of the total gradient norm g. When
    z = (g - mu) / s exceeds ``z_thresh`` the gradients are scaled to norm mu + z_thresh * s;
    the EMA is then updated with the clipped norm. The first ``warmup`` steps only collect
    statistics (plus a hard ``max_norm`` clip if given).
    """

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup: int = 25,
                 max_norm: float | None = 1.0) -> None:
        self.alpha, self.z_thresh, self.warmup, self.max_norm = alpha, z_thresh, warmup, max_norm
        self.mean: float | None = None
        self.var = 0.0
        self.steps = 0
        self.warmup_norms: list[float] = []

    def __call__(self, parameters: Iterable[nn.Parameter]) -> float:
        """Clip in place; returns the gradient norm before clipping."""
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return 0.0
        total = torch.nn.utils.get_total_norm([p.grad for p in params])  # ()
        norm = float(total)
        self.steps += 1
        if self.steps <= self.warmup or self.mean is None:
            self.warmup_norms.append(norm)
            if self.max_norm is not None and norm > self.max_norm:
                torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, total)
            if self.steps >= self.warmup:
                t = torch.tensor(self.warmup_norms)
                self.mean, self.var = float(t.mean()), float(t.var(unbiased=False))
            return norm
        std = math.sqrt(self.var) + 1e-6
        z = (norm - self.mean) / std
        clipped = norm
        if z > self.z_thresh:
            clipped = self.mean + self.z_thresh * std
            torch.nn.utils.clip_grads_with_norm_(params, clipped, total)
        self.mean = self.alpha * self.mean + (1 - self.alpha) * clipped
        self.var = self.alpha * self.var + (1 - self.alpha) * (clipped - self.mean) ** 2
        return norm

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "steps": self.steps,
                "warmup_norms": list(self.warmup_norms)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.steps = state["mean"], state["var"], state["steps"]
        self.warmup_norms = list(state["warmup_norms"])
