"""Call a student or teacher model so that it returns what the active objectives need."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from wrinklefree.block_diffusion import block_diffusion_forward
from wrinklefree.objectives.base import Batch, Requirements
from wrinklefree.objectives.repetition import REPETITION_KEYS


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (Llama, Qwen2/3, Mistral...)."""
    decoder = (
        model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    )
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no decoder layer list (model.model.layers): "
            "q/k/v capture supports Llama-style decoders"
        )
    return layers


def _head_dim(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


DLM_KEYS = ("dlm_noisy_ids", "dlm_mask", "dlm_rate", "dlm_block_size")


def clean_view(batch: Batch) -> Batch:
    """The batch without the DLM noisy views and the repeated rows: what the teacher and a plain
    forward see."""
    return {k: v for k, v in batch.items() if k not in DLM_KEYS + REPETITION_KEYS}


def run_model(
    model: nn.Module, batch: Batch, requirements: Requirements, *, teacher: bool = False
) -> Any:
    """Forward ``model`` on ``batch`` with exactly the outputs ``requirements`` ask for.

    Calls with ``use_cache=False``, ``position_ids`` and the batch's ``attention_mask`` (absent
    for packed windows, where transformers builds a document-aware causal mask from position ids),
    ``output_hidden_states`` / ``output_attentions`` as required (attentions switch the model to
    eager attention: sdpa silently returns none). For ``requirements.qkv_layers`` the outputs of
    ``layers[i].self_attn.{q,k,v}_proj`` are captured with forward hooks and attached as
    ``out.qkv = {i: (q, k, v)}``, each (B, heads, L, head_dim) before RoPE.

    A DLM batch (``dlm_noisy_ids``, from ``DLMObjective.preprocess_batch``) runs the clean window
    and its two noisy copies in one forward with the block-diffusion layout
    (:func:`~wrinklefree.block_diffusion.block_diffusion_forward`): ``out.logits``,
    ``hidden_states``, ``attentions`` and ``qkv`` are the clean (causal) view, (B, L, ...), so
    the AR objectives never see masked input; ``out.dlm_logits`` (2B, L, V) and
    ``out.dlm_qkv`` (2B, heads, L, d) are the noisy views. ``teacher=True`` runs the clean
    window only (a plain causal forward).

    A batch with ``repetition_ids`` (from ``RepetitionObjective.preprocess_batch``) also runs
    those rows through the student in a second, plain causal forward: ``out.repetition_logits``
    (R, N, V). Rows the student wrote (``on_policy_ids``, from ``OnPolicyDistillObjective``) run
    the same way through student and teacher: ``out.on_policy_logits`` (R, N, V).
    """
    if teacher:
        batch = clean_view(batch)
    if requirements.attentions and model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")
    captured: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    layers = decoder_layers(model) if requirements.qkv_layers else None
    for index in requirements.qkv_layers:
        attention = layers[index].self_attn
        captured[index] = {}
        for name in ("q", "k", "v"):
            projection = getattr(attention, f"{name}_proj", None)
            if projection is None:
                raise TypeError(
                    f"layer {index} attention has no {name}_proj (fused qkv?): attention relation "
                    "distillation needs separate q/k/v projections"
                )
            handles.append(projection.register_forward_hook(_store(captured[index], name)))
    options = {
        "output_hidden_states": requirements.hidden_states,
        "output_attentions": requirements.attentions,
    }
    try:
        if "dlm_noisy_ids" in batch:
            out = block_diffusion_forward(
                model, batch["input_ids"], batch["dlm_noisy_ids"], batch["dlm_block_size"],
                position_ids=batch.get("position_ids"),
                attention_mask=batch.get("attention_mask"), **options,
            )
        else:
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"),
                use_cache=False,
                **options,
            )
    finally:
        for handle in handles:
            handle.remove()
    if "repetition_ids" in batch:
        out.repetition_logits = model(input_ids=batch["repetition_ids"], use_cache=False).logits
    if "on_policy_ids" in batch:
        out.on_policy_logits = model(input_ids=batch["on_policy_ids"], use_cache=False).logits
    if requirements.attentions and not out.attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attentions in eager mode")
    head_dim = _head_dim(model)
    qkv = {
        index: tuple(_split_heads(found[name], head_dim) for name in ("q", "k", "v"))
        for index, found in captured.items()
    }
    length = getattr(out, "view_length", None)
    if length is None:
        out.qkv = qkv
    else:  # [clean | noisy_1 | noisy_2] along the sequence -> clean view, noisy views
        out.qkv = {i: tuple(t[:, :, :length] for t in x) for i, x in qkv.items()}
        out.dlm_qkv = {i: tuple(_noisy_rows(t, length) for t in x) for i, x in qkv.items()}
    return out


def _noisy_rows(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, (1+c)L, d) -> (c·B, H, L, d): the noisy views stacked along the batch."""
    return torch.cat(x[:, :, length:].split(length, dim=2))


def _store(into: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        into[name] = output

    return hook


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, L, heads·d) -> (B, heads, L, d)."""
    batch, length, width = x.shape
    return x.view(batch, length, width // head_dim, head_dim).transpose(1, 2)
