"""The Fast-dLLM v2 block-diffusion attention layout, shared by training, decoding and evaluation.

Fast-dLLM v2 (arXiv 2509.26328, Sec. 3; the layout of BD3-LM, arXiv 2503.09573) trains a
block-diffusion student on a clean copy x_0 and a noisy copy x_t of each window in one forward
pass. Our layout, per packed document, with blocks of ``block_size`` positions counted from the
document's first token (``position_ids // block_size``):

- clean query i -> clean key j:  j <= i (ordinary causal attention: the AR view);
- noisy query i -> noisy key j:  same block (bidirectional inside the block);
- noisy query i -> clean key j:  block(j) < block(i) (the clean text of all previous blocks);
- clean query -> noisy key:      never; nothing crosses a document boundary.

The clean view is exactly a causal forward of the window (the AR objectives read it), and a noisy
block sees what the decoder sees: the KV cache of the committed (causally encoded) blocks plus
the block being denoised. Each window carries ``copies`` noisy views (two complementary masks)
that share the one clean copy: the model input is [clean | noisy_1 | noisy_2], 3L tokens, all
three with the window's position ids.

The mask goes through transformers' attention interface as a custom 4D mask (returned as is by
``masking_utils``): boolean for ``sdpa``, additive float for ``eager``. Other attention
implementations are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

SUPPORTED_ATTENTION = ("sdpa", "eager")
BLOCK_SIZE_KEY = "dlm_block_size"  # on the model's config, beside mask_token_id


def record_block_size(model: nn.Module, block_size: int) -> None:
    """Record the block size a student trains with on its config (saved in config.json, as
    ``mask_token_id`` is), so the decoders default to the blocks it learned."""
    setattr(model.config, BLOCK_SIZE_KEY, int(block_size))


def block_size_of(model: nn.Module) -> int | None:
    """The block size recorded by :func:`record_block_size`, or None (not a trained DLM)."""
    size = getattr(getattr(model, "config", None), BLOCK_SIZE_KEY, None)
    return None if size is None else int(size)


def default_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L) long: 0..L-1 in every row (one document per row)."""
    length = input_ids.shape[1]
    return torch.arange(length, device=input_ids.device).expand(input_ids.shape[0], length)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L): index of the packed document of each token (a new one starts where the
    position id is 0 or does not follow its left neighbour)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(-1)


def block_ids(position_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, L) -> (B, L): block index of each token inside its document (Fast-dLLM v2 blocks are
    aligned to the document's positions, so decoding and training cut text the same way)."""
    return torch.div(position_ids, block_size, rounding_mode="floor")


def block_diffusion_mask(
    position_ids: torch.Tensor,
    block_size: int,
    *,
    copies: int = 2,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training layout as a boolean mask, True = may attend.

    position_ids (B, L), key_valid (B, L) bool (False = padding) -> (B, 1, (1+copies)L,
    (1+copies)L) over the input [clean | noisy_1 | ... | noisy_copies]. A padding query keeps its
    own key, so no row is empty (an all-masked softmax row is NaN).
    """
    batch, length = position_ids.shape
    doc = document_ids(position_ids)  # (B, L)
    blk = block_ids(position_ids, block_size)  # (B, L)
    same_doc = doc[:, :, None] == doc[:, None, :]  # (B, L, L) query x key
    index = torch.arange(length, device=position_ids.device)
    causal = same_doc & (index[None, :, None] >= index[None, None, :])  # clean -> clean
    same_block = same_doc & (blk[:, :, None] == blk[:, None, :])  # noisy -> its own noisy copy
    earlier = same_doc & (blk[:, :, None] > blk[:, None, :])  # noisy -> clean of earlier blocks
    if key_valid is not None:
        keys = key_valid.bool()[:, None, :]  # (B, 1, L)
        causal, same_block, earlier = causal & keys, same_block & keys, earlier & keys
    views = 1 + copies
    allowed = torch.zeros(batch, views * length, views * length, dtype=torch.bool,
                          device=position_ids.device)
    allowed[:, :length, :length] = causal
    for c in range(1, views):
        rows = slice(c * length, (c + 1) * length)
        allowed[:, rows, :length] = earlier
        allowed[:, rows, rows] = same_block
    allowed |= torch.eye(views * length, dtype=torch.bool, device=allowed.device)  # no empty row
    return allowed[:, None]  # (B, 1, 3L, 3L)


def attention_implementation(model: nn.Module) -> str:
    """The model's attention implementation (stub models without a config count as sdpa)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def check_layout_support(model: nn.Module, length: int | None = None) -> None:
    """Raise unless a custom 4D mask reaches this model's attention unchanged."""
    implementation = attention_implementation(model)
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"block diffusion needs a custom 4D attention mask, which attn_implementation="
            f"{implementation!r} does not take; load the model with attn_implementation='sdpa' "
            "(or 'eager'), e.g. model.set_attn_implementation('sdpa')"
        )
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and length is not None:
        if length > window:
            raise ValueError(
                f"the model uses a sliding attention window of {window} tokens, which the custom "
                f"block-diffusion mask does not apply; use windows of at most {window} tokens "
                f"(got {length})"
            )


def attention_bias(allowed: torch.Tensor, model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) bool -> the 4D mask the model's attention takes: the boolean mask itself for
    sdpa (True = attend), 0 / dtype-min additive float for eager (it adds the mask to scores)."""
    check_layout_support(model)
    if attention_implementation(model) == "eager":
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def model_dtype(model: nn.Module) -> torch.dtype:
    parameter = next(model.parameters(), None)
    return torch.float32 if parameter is None else parameter.dtype


def block_diffusion_forward(
    model: nn.Module,
    clean_ids: torch.Tensor,
    noisy_ids: torch.Tensor,
    block_size: int,
    *,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """One forward over [clean | noisy_1 | ... | noisy_c] with the block-diffusion layout.

    clean_ids (B, L), noisy_ids (c·B, L) with rows k·B + b the k-th noisy copy of window b (the
    DLM batch convention), position_ids / attention_mask (B, L). Returns the model output with
    ``logits`` replaced by the clean view's (B, L, V) and ``dlm_logits`` the noisy views'
    (c·B, L, V); ``hidden_states`` and ``attentions`` cover the clean view only and
    ``view_length`` is L. Extra keyword arguments go to the model.
    """
    batch, length = clean_ids.shape
    if noisy_ids.shape[1] != length or noisy_ids.shape[0] % batch:
        raise ValueError(
            f"noisy_ids {tuple(noisy_ids.shape)} must hold whole copies of the clean windows "
            f"{tuple(clean_ids.shape)}"
        )
    copies = noisy_ids.shape[0] // batch
    if position_ids is None:
        position_ids = default_positions(clean_ids)
    position_ids = position_ids.expand(batch, length)
    check_layout_support(model, length)
    allowed = block_diffusion_mask(position_ids, block_size, copies=copies,
                                   key_valid=attention_mask)
    inputs = torch.cat([clean_ids, *noisy_ids.split(batch)], dim=1)  # (B, (1+c)L)
    out = model(
        input_ids=inputs,
        position_ids=position_ids.repeat(1, 1 + copies),  # noisy copies share the positions
        attention_mask=attention_bias(allowed, model, model_dtype(model)),
        use_cache=False,
        **kwargs,
    )
    views = out.logits.split(length, dim=1)  # (1+c) x (B, L, V)
    out.logits = views[0]
    out.dlm_logits = torch.cat(views[1:])  # (c·B, L, V)
    if out.get("hidden_states") is not None:
        out.hidden_states = tuple(h[:, :length] for h in out.hidden_states)
    if out.get("attentions") is not None:
        out.attentions = tuple(a[..., :length, :length] for a in out.attentions)
    out.view_length = length
    return out
