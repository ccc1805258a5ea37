"""Call a student or teacher model so that it returns what the active objectives need."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from wrinklefree.objectives.base import Batch, Requirements


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

    ``teacher=True`` feeds ``original_input_ids`` (the unmasked tokens) when the batch has them.
    A DLM batch holds each sequence twice (complementary masks), so the teacher runs on the
    first half only and its outputs are repeated: same result, half the cost.
    """
    if teacher and "original_input_ids" in batch:
        half = batch["original_input_ids"].shape[0] // 2
        single = {k: _first_rows(v, half) for k, v in batch.items()}
        single["input_ids"] = single.pop("original_input_ids")
        single.pop("dlm_mask", None)
        return _repeat_outputs(run_model(model, single, requirements), 2)
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
    try:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
            output_hidden_states=requirements.hidden_states,
            output_attentions=requirements.attentions,
        )
    finally:
        for handle in handles:
            handle.remove()
    if requirements.attentions and not out.attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attentions in eager mode")
    head_dim = _head_dim(model)
    out.qkv = {
        index: tuple(_split_heads(found[name], head_dim) for name in ("q", "k", "v"))
        for index, found in captured.items()
    }
    return out


def _store(into: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        into[name] = output

    return hook


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, L, heads·d) -> (B, heads, L, d)."""
    batch, length, width = x.shape
    return x.view(batch, length, width // head_dim, head_dim).transpose(1, 2)


def _first_rows(value: Any, rows: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 2 * rows:
        return value[:rows]
    return value


def _repeat_outputs(out: Any, times: int) -> Any:
    """Concatenate every batch-major output ``times`` times along the batch dimension."""

    def rep(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * times)

    out.logits = rep(out.logits)
    if out.get("hidden_states") is not None:
        out.hidden_states = tuple(rep(h) for h in out.hidden_states)
    if out.get("attentions") is not None:
        out.attentions = tuple(rep(a) for a in out.attentions)
    out.qkv = {i: tuple(rep(t) for t in qkv) for i, qkv in out.qkv.items()}
    return out
