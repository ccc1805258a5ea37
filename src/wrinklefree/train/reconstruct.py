"""Layer-by-layer reconstruction of a converted student from its full-precision teacher.

Ternarizing every weight of a pretrained model at once leaves it at 1e5-1e6x the teacher's
perplexity (docs/benchmarks.md): end-to-end distillation from there spends its first hundreds of
steps rebuilding what each layer used to compute, and on a short budget it rebuilds the style of
its training text rather than the model. Block-wise reconstruction (BRECQ, arXiv 2102.05426;
EfficientQAT's Block-AP, arXiv 2407.11062) gives each decoder layer a dense, local target
instead: layer l alone is trained (straight-through estimator, as in end-to-end training) to map
the student's own input at l — the output of the already reconstructed layers 0..l-1, so it
learns to undo the error they left — to the teacher's output at l:

    min_θ  mean_t ||f_l(x_l^student; θ)_t - y_t||² / ||y_t||²,   y = f_l^teacher(x_l^teacher)

per token t, so the few tokens where the teacher writes massive activations (which the next
RMSNorm mostly divides away) do not dominate: measured 2x better than the summed relative error
(docs/benchmarks.md).

A layer costs one forward and backward of itself (no LM head, no other layer), so every window
can be seen for several epochs; the end-to-end loop then starts from a working model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from wrinklefree.objectives.forward import decoder_layers
from wrinklefree.objectives.layerwise import hidden_state_loss
from wrinklefree.train.optim import lr_multiplier


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once layer 0's input is known."""


def _layer_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]):
    """(hidden states, keyword arguments) that ``model`` passes to its first decoder layer, per
    batch: the embeddings and what the model derives from the batch (rotary position
    embeddings, the document-aware causal mask). The forward stops at layer 0."""
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), kwargs))
        raise _Captured

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                          attention_mask=batch.get("attention_mask"), use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # transformers < 5 returned a tuple


def reconstruct_layers(
    student: nn.Module,
    teacher: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[float]:
    """Train each decoder layer of ``student`` (in place, in order) to reproduce ``teacher``'s.

    Both models must have the same architecture (the student is the converted teacher). Each
    layer gets ``epochs`` passes over ``batches`` with AdamW at ``lr`` (cosine to lr/10). Both
    models move to ``device`` (default: the student's). Returns, per layer after its training, the
    loss it minimised on the calibration batches: the mean over tokens of ||s - t||² / ||t||²
    (the summed error Σ||s - t||² / Σ||t||² reads ~0.98 from SmolLM2's layer 11 on, where a few
    tokens carry massive activations that the ternary layer deliberately does not chase).
    """
    if epochs <= 0:
        return []
    device = torch.device(device) if device is not None else next(student.parameters()).device
    student.to(device)
    teacher.to(device)
    batches = [{k: v.to(device) for k, v in b.items() if v is not None} for b in batches]
    student_layers, teacher_layers = decoder_layers(student), decoder_layers(teacher)
    if len(student_layers) != len(teacher_layers):
        raise ValueError(f"student has {len(student_layers)} decoder layers, teacher "
                         f"{len(teacher_layers)}: reconstruction needs the same architecture")
    # per batch: the input of layer 0 (B, L, H) and what each model derives from the batch
    x_teacher, kwargs = zip(*_layer_inputs(teacher, batches), strict=True)
    x_student, student_kwargs = zip(*_layer_inputs(student, batches), strict=True)
    was_training = student.training
    student.train()
    errors = []
    bar = tqdm(total=len(student_layers), desc="reconstructing layers", disable=not progress)
    for s_layer, t_layer in zip(student_layers, teacher_layers, strict=True):
        y_teacher = _outputs(t_layer, x_teacher, kwargs)
        y_student = _outputs(s_layer, x_student, student_kwargs)
        # a layer that already gives the teacher's exact output (a full-precision layer before
        # the first ternary one) has nothing to fit: 48 steps saved per such layer in the demo
        if not all(torch.equal(s, t) for s, t in zip(y_student, y_teacher, strict=True)):
            _fit_layer(s_layer, x_student, y_teacher, student_kwargs, epochs, lr)
            y_student = _outputs(s_layer, x_student, student_kwargs)
        x_student, x_teacher = y_student, y_teacher
        errors.append(_relative_error(x_student, y_teacher))
        bar.set_postfix(layer_error=f"{errors[-1]:.3f}")
        bar.update()
    bar.close()
    student.train(was_training)
    return errors


@torch.no_grad()
def _outputs(layer: nn.Module, inputs: list[torch.Tensor],
             kwargs: list[dict[str, Any]]) -> list[torch.Tensor]:
    """``layer``'s output for each batch's input (no autograd)."""
    return [_run_layer(layer, x, kw) for x, kw in zip(inputs, kwargs, strict=True)]


def _fit_layer(layer: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
               kwargs: list[dict[str, Any]], epochs: int, lr: float) -> None:
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * len(inputs)
    generator = torch.Generator().manual_seed(0)  # the batch order; the same on every run
    step = 0
    for _ in range(epochs):
        for i in torch.randperm(len(inputs), generator=generator).tolist():
            for group in optimizer.param_groups:  # cosine from lr to lr/10 over the layer's steps
                group["lr"] = lr * lr_multiplier(step, "cosine", steps, warmup=0, min_ratio=0.1)
            loss = _per_token_error(_run_layer(layer, inputs[i], kwargs[i]), targets[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


def _per_token_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fitted loss of one batch (B, L, H): mean over its tokens of ||s - t||² / ||t||²."""
    valid = torch.ones(output.shape[:2], dtype=torch.bool, device=output.device)
    return hidden_state_loss(output, target, valid, "mse_per_token")


def _relative_error(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """:func:`_per_token_error` over every token of every batch (batches weighted by tokens)."""
    pairs = list(zip(outputs, targets, strict=True))
    total = sum(float(_per_token_error(o, t)) * o.shape[:2].numel() for o, t in pairs)
    return total / sum(o.shape[:2].numel() for o, _ in pairs)
