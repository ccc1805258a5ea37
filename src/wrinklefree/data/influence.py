"""Influence-based remixing: move the mixture weights toward the sources that help a probe set.

Score. The influence of training on a batch ``z`` on the probe loss is (DataInf, Kwon et al. 2023,
arXiv 2310.00902, Eq. 1) ``I(z) = -sum_l v_l^T (G_l + lambda_l I)^-1 grad_l loss(z)`` with ``v_l``
the probe-loss gradient of layer ``l``. We take its identity-curvature limit (large damping
``lambda_l``, where DataInf's closed form, Eq. 5, tends to ``-(1/lambda) v^T grad loss(z)``): the
*gradient alignment* of each source with the probe, as TracIn (arXiv 2002.08484) and DoGE
(arXiv 2310.15393) use it. Positive = a step on that source lowers the probe loss. We report the
cosine (default; sources with large gradients, e.g. noise, do not win by magnitude) or the dot
product, on a cheap parameter subset (the last decoder layer + final norm, or all norms).

Update. Exponentiated gradient / multiplicative weights as in DoGE's and DoReMi's (arXiv
2305.10429) Algorithm 1, ``u_i = w_i * exp(eta * s_i)``, followed by the KL (Bregman)
projection onto ``{sum_i w_i = 1, min_weight <= w_i <= max_weight}``, which is
``w_i = clip(t * u_i, min, max)`` with the scalar ``t`` that makes the weights sum to 1 (found by
bisection). Sources at weight 0 (switched off by a curriculum phase) stay at 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.data.config import RemixConfig
from wrinklefree.data.packing import collate

log = logging.getLogger(__name__)
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of a packed batch (labels shifted here; -100 ignored)."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                   attention_mask=None, use_cache=False).logits  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                           ignore_index=-100)


def influence_params(model: nn.Module, which: str = "last_layer") -> list[nn.Parameter]:
    """The cheap parameter subset the influence is measured on.

    ``last_layer``: the last block of the decoder layer list + the final norm (backward stops
    there, so it costs about one extra forward). ``norms``: every norm weight (incl. SubLN).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if which == "norms":
        chosen = [p for n, p in named if "norm" in n]
    elif which == "last_layer":
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        lists = [item for item in lists if len(item[1]) == depth] or lists  # the decoder layers
        if not lists:
            raise ValueError("model has no nn.ModuleList of layers; use which='norms'")
        list_name, layers = max(lists, key=lambda item: len(item[1]))
        last = f"{list_name}.{len(layers) - 1}."
        chosen = [p for n, p in named
                  if n.startswith(last) or ("norm" in n and not n.startswith(f"{list_name}."))]
    else:
        raise ValueError(f"which={which!r}: expected 'last_layer' or 'norms'")
    if not chosen:
        raise ValueError(f"no trainable parameters selected by which={which!r}")
    return chosen


def _flat_grad(model: nn.Module, loss_fn: LossFn, batch: dict[str, torch.Tensor],
               params: list[nn.Parameter]) -> torch.Tensor:
    """Gradient of the batch loss w.r.t. ``params``, flattened to one vector (P,)."""
    device = params[0].device
    batch = {k: v.to(device) for k, v in batch.items()}
    grads = torch.autograd.grad(loss_fn(model, batch), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                      for g, p in zip(grads, params, strict=True)])


def estimate_source_influence(
    model: nn.Module,
    loss_fn: LossFn,
    source_batches: Mapping[str, dict[str, torch.Tensor]],
    probe_batch: dict[str, torch.Tensor],
    params: list[nn.Parameter],
    metric: str = "cosine",
) -> dict[str, float]:
    """Alignment of each source's gradient with the probe gradient (positive = helps the probe).

    Does not touch ``param.grad`` (uses ``torch.autograd.grad``).
    """
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric={metric!r}: expected 'cosine' or 'dot'")
    probe = _flat_grad(model, loss_fn, probe_batch, params)  # (P,)
    scores = {}
    for name, batch in source_batches.items():
        grad = _flat_grad(model, loss_fn, batch, params)  # (P,)
        dot = torch.dot(grad, probe)
        if metric == "cosine":  # TracIn / DoGE alignment, normalised (see module docstring)
            dot = dot / (grad.norm() * probe.norm()).clamp_min(1e-12)
        scores[name] = float(dot)
    return scores


def remix_weights(weights: Mapping[str, float], scores: Mapping[str, float], step_size: float,
                  min_weight: float = 0.0, max_weight: float = 1.0) -> dict[str, float]:
    """One exponentiated-gradient step on the mixture weights, bounded and normalised.

    ``u_i = w_i * exp(step_size * s_i)`` (DoGE / DoReMi Alg. 1), then the KL projection onto the
    bounded simplex ``w_i = clip(t * u_i, min_weight, max_weight)``, ``sum_i w_i = 1``. Sources with
    weight 0 keep weight 0 and need no score.
    """
    active = [n for n, w in weights.items() if w > 0]
    missing = sorted(set(active) - set(scores))
    if missing or set(scores) - set(weights):
        raise KeyError(f"scores {sorted(scores)} must cover the sources with weight > 0 "
                       f"{sorted(active)} (missing {missing}) and name no others")
    n = len(active)
    if not (n * min_weight <= 1 + 1e-12 and n * max_weight >= 1 - 1e-12 and min_weight >= 0):
        raise ValueError(f"bounds [{min_weight}, {max_weight}] cannot hold {n} active weights that "
                         "sum to 1; need n * min_weight <= 1 <= n * max_weight")
    total = sum(weights[a] for a in active)
    log_u = {a: math.log(weights[a] / total) + step_size * scores[a] for a in active}
    top = max(log_u.values())
    u = {a: math.exp(v - top) for a, v in log_u.items()}  # (0, 1], the largest is 1

    def mass(t: float) -> float:
        return sum(min(max(t * u[a], min_weight), max_weight) for a in active)

    lo, hi = 0.0, 1.0  # mass(0) = n * min <= 1; grow hi until mass(hi) >= 1
    while mass(hi) < 1:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < 1 else (lo, mid)
    new = {a: min(max(hi * u[a], min_weight), max_weight) for a in active}
    norm = sum(new.values())
    return {name: new[name] / norm if name in new else 0.0 for name in weights}


def build_probe_batch(tokenizer, seq_len: int, config: RemixConfig,
                      skip: int = 0) -> dict[str, torch.Tensor]:
    """The probe set: ``config.probe_windows`` ASV validation windows after the first ``skip``
    (pass the number of validation windows, so the probe never overlaps what training validates
    on; it never overlaps the test windows reports print, which are other documents)."""
    from wrinklefree.data.mixture import build_val_windows

    return collate(build_val_windows(tokenizer, seq_len, skip + config.probe_windows)[skip:])


def _mean_over_ranks(scores: dict[str, float]) -> dict[str, float]:
    """Average scores over DDP ranks so every rank applies the same new weights."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return scores
    names = sorted(scores)
    t = torch.tensor([scores[n] for n in names], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(names, (t / dist.get_world_size()).tolist(), strict=True))


class InfluenceRemixer:
    """Every ``config.every_steps`` steps: score each active source against the probe batch and
    move ``stream``'s weights by :func:`remix_weights`. Each update is logged and kept in
    :attr:`history` as ``{"step", "scores", "weights"}``."""

    def __init__(self, stream, probe_batch: dict[str, torch.Tensor], config: RemixConfig,
                 loss_fn: LossFn = causal_lm_loss):
        if config.every_steps < 1:
            raise ValueError(f"remix.every_steps={config.every_steps} must be >= 1")
        self.stream, self.probe_batch, self.config, self.loss_fn = (
            stream, probe_batch, config, loss_fn)
        self.history: list[dict] = []

    def maybe_remix(self, step: int, model: nn.Module) -> dict | None:
        """Remix if ``step`` (count of optimizer steps done) is a positive multiple of N."""
        if not self.config.enabled or step <= 0 or step % self.config.every_steps:
            return None
        return self.remix(step, model)

    def remix(self, step: int, model: nn.Module) -> dict:
        cfg = self.config
        active = [n for n, w in self.stream.weights.items() if w > 0]
        batches = {n: self.stream.source_batch(n, cfg.windows_per_source) for n in active}
        params = influence_params(model, cfg.params)
        scores = estimate_source_influence(model, self.loss_fn, batches, self.probe_batch, params)
        scores = _mean_over_ranks(scores)
        weights = remix_weights(self.stream.weights, scores, cfg.step_size, cfg.min_weight,
                                cfg.max_weight)
        self.stream.set_weights(weights)
        record = {"step": step, "scores": scores, "weights": weights}
        log.info("data remix at step %d: scores %s -> weights %s", step,
                 {k: round(v, 4) for k, v in scores.items()},
                 {k: round(v, 4) for k, v in weights.items()})
        self.history.append(record)
        return record
