"""Diffusion-LM adaptation: masked-token prediction with token shift and complementary masks.

Fast-dLLM v2 (arXiv 2509.26328) adapts an autoregressive model into a block-diffusion LM by
(1) *token shift*: the logits at position i-1 predict the masked token i, so the pretrained
next-token head is reused as is, (2) *complementary masks*: each window gets two noisy copies,
with mask m and with 1 - m, so every maskable token is predicted exactly once per batch, and
(3) the *block layout*: the clean window and its noisy copies go through one forward pass, the
clean copy causally, each noisy block bidirectionally inside itself and onto the clean text of
the previous blocks (:mod:`wrinklefree.block_diffusion`).
With ``mask_prob=None`` the mask rate is drawn per window, t ~ U(eps, 1 - eps), and each masked
token's loss is weighted by 1/t: the masked-diffusion ELBO of MDLM (arXiv 2406.07524,
continuous-time NELBO) and LLaDA (arXiv 2502.09992, Eq. 3).

The first token of every block is never masked: the decoder produces it autoregressively from
the clean logits of the previous block (as Fast-dLLM v2's decoder does), which is what the
clean view trains with the AR objectives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.block_diffusion import default_positions
from wrinklefree.objectives.base import (
    IGNORE_INDEX,
    Batch,
    Objective,
    ObjectiveOutput,
    next_position_mask,
    zero_loss,
)

MASK_TOKEN = "<|mask|>"


def add_mask_token(tokenizer: Any, model: nn.Module) -> int:
    """Add ``<|mask|>`` to ``tokenizer`` and ``model``; return its id.

    The new embedding row (and the ``lm_head`` row if the head is not tied) is set to the mean of
    the rows of the existing tokens, so the mask starts as an "average token" rather than noise.
    The id is recorded as ``model.config.mask_token_id``. Idempotent: a tokenizer that already has
    the token (e.g. a saved DLM checkpoint) keeps it and its trained row untouched.
    """
    if MASK_TOKEN in tokenizer.get_added_vocab():
        mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
        if model.get_input_embeddings().num_embeddings <= mask_id:
            raise ValueError(
                f"tokenizer has {MASK_TOKEN} (id {mask_id}) but the model's embedding has only "
                f"{model.get_input_embeddings().num_embeddings} rows: load the model that was "
                "saved with this tokenizer"
            )
        model.config.mask_token_id = mask_id
        return mask_id
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight  # (V, H)
        embedding[mask_id] = embedding[:mask_id].mean(0)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not embedding:
            head.weight[mask_id] = head.weight[:mask_id].mean(0)
            if getattr(head, "bias", None) is not None:
                head.bias[mask_id] = head.bias[:mask_id].mean()
    model.config.mask_token_id = mask_id
    return mask_id


def check_mask_token(tokenizer: Any, mask_id: int, *, allow_vocab_token: bool = False) -> None:
    """Raise unless ``mask_id`` is a dedicated added token (not text, not eos/bos/pad/unk).

    Masking with an ordinary token teaches the model that this token means "unknown" and makes
    real occurrences of it ambiguous; ``allow_vocab_token`` accepts it knowingly.
    """
    if allow_vocab_token:
        return
    reserved = {
        getattr(tokenizer, attr, None)
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    }
    if mask_id in tokenizer.get_added_vocab().values() and mask_id not in reserved:
        return
    token = tokenizer.convert_ids_to_tokens(mask_id)
    raise ValueError(
        f"mask_token_id {mask_id} ({token!r}) is not a dedicated mask token; call "
        "wrinklefree.objectives.add_mask_token(tokenizer, model) and use the id it returns, or "
        "set allow_vocab_mask_token: true to mask with an ordinary token on purpose"
    )


def maskable_positions(batch: Batch, block_size: int | None = None) -> torch.Tensor:
    """(B, L) bool: tokens that may be masked.

    Never the first position of the window or of a packed document (``position_ids == 0``: the
    logits before it belong to another document, so token shift has nothing to predict it from),
    with ``block_size`` never the first token of a block (``position_ids % block_size == 0``: the
    decoder predicts it autoregressively), never ignored labels (-100) and never padding
    (``attention_mask == 0``).
    """
    labels = batch["labels"]
    ok = labels != IGNORE_INDEX
    ok[:, 0] = False
    positions = batch.get("position_ids")
    if positions is None and block_size is not None:
        positions = default_positions(labels)
    if positions is not None:
        positions = positions.expand_as(labels)
        ok &= positions != 0
        if block_size is not None:
            ok &= positions % block_size != 0
    if batch.get("attention_mask") is not None:
        ok &= batch["attention_mask"].bool()
    return ok


def complementary_masks(maskable: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """(B, L) bool, (B,) -> (2B, L): mask m ~ Bernoulli(rate) on maskable tokens, then its
    complement, so each maskable token is masked in exactly one of the two copies."""
    u = torch.rand(maskable.shape, device=maskable.device)  # (B, L)
    first = (u < rate[:, None]) & maskable
    return torch.cat([first, ~first & maskable])


def dlm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    rate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-shifted masked-token CE; returns (loss, unweighted mean CE, accuracy).

    logits (2B, L, V), targets (2B, L) original tokens, mask (2B, L) True where masked (rows b and
    b + B complementary), rate (2B,) per-row mask rate t or None.
    rate None: mean CE over masked tokens. Otherwise the ELBO estimate
    Σ_masked CE / t divided by the number of maskable tokens of the doubled batch (= 2 × masked,
    since each maskable token is masked once per pair), whose expectation is the mean CE.
    """
    predict = next_position_mask(mask)  # logits at i-1 predict masked token i (token shift)
    n_masked = predict.sum()
    if n_masked == 0:
        zero = zero_loss(logits)
        return zero, zero.detach(), zero.detach()
    rows = logits[predict].float()  # (N, V)
    wanted = targets[:, 1:][mask[:, 1:]]  # (N,) same row-major order as ``predict``
    ce = F.cross_entropy(rows, wanted, reduction="none")  # (N,)
    accuracy = (rows.argmax(-1) == wanted).float().mean().detach()
    if rate is None:
        return ce.mean(), ce.mean().detach(), accuracy
    inv_t = (1.0 / rate)[:, None].expand_as(predict)[predict]  # (N,)
    loss = (ce * inv_t).sum() / (2 * n_masked)  # LLaDA Eq. 3 (MDLM NELBO)
    return loss, ce.mean().detach(), accuracy


class DLMObjective(Objective):
    """Masked-diffusion loss with token shift, complementary masks and the block layout
    (Fast-dLLM v2).

    ``preprocess_batch`` leaves the clean window in ``input_ids`` (the AR objectives and the
    teacher read it) and adds the two noisy copies: ``dlm_noisy_ids`` (2B, L) with the mask
    token where ``dlm_mask`` (2B, L) is True, ``dlm_rate`` (2B,) the per-copy mask rate and
    ``dlm_block_size``. Rows b and b + B of the noisy tensors are window b with complementary
    masks. :func:`~wrinklefree.objectives.run_model` then runs [clean | noisy_1 | noisy_2] in
    one forward with the block layout; the noisy views' logits come back as ``dlm_logits``.

    Args:
        mask_token_id: id of the dedicated mask token (see :func:`add_mask_token`); with
            ``create_objective_manager(..., tokenizer=tok)`` it may be left None and is looked up.
        mask_prob: fixed mask rate p (the complement copy gets 1 - p) and a plain mean over
            masked tokens; None draws t ~ U(eps, 1 - eps) per window with 1/t weighting.
        eps: keeps t and 1 - t away from 0 so the 1/t weights stay <= 1/eps.
        block_size: tokens per diffusion block (Fast-dLLM v2 uses 32); decode with the same.
        tokenizer: when given, ``mask_token_id`` is checked (:func:`check_mask_token`).
        allow_vocab_mask_token: accept an ordinary vocabulary token as the mask (not checked).
    """

    name = "dlm"
    modifies_input = True
    reads_noisy_view = True

    def __init__(
        self,
        mask_token_id: int | None = None,
        mask_prob: float | None = None,
        eps: float = 1e-3,
        block_size: int = 32,
        tokenizer: Any = None,
        allow_vocab_mask_token: bool = False,
    ) -> None:
        if mask_prob is not None and not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1) or null, got {mask_prob}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.mask_token_id = resolve_mask_token(mask_token_id, tokenizer, allow_vocab_mask_token)
        self.mask_prob = mask_prob
        self.eps = float(eps)
        self.block_size = checked_block_size(block_size)

    def preprocess_batch(self, batch: Batch) -> Batch:
        input_ids = batch["input_ids"]  # (B, L)
        size = input_ids.shape[0]
        if self.mask_prob is None:
            rate = self.eps + (1 - 2 * self.eps) * torch.rand(size, device=input_ids.device)
        else:
            rate = torch.full((size,), self.mask_prob, device=input_ids.device)
        mask = complementary_masks(maskable_positions(batch, self.block_size), rate)  # (2B, L)
        out = with_noisy_views(batch, mask, self.mask_token_id, self.block_size)
        out["dlm_rate"] = torch.cat([rate, 1 - rate])  # (2B,)
        return out

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        logits = noisy_logits(model_outputs, batch, self.mask_token_id)  # (2B, L, V)
        mask = batch["dlm_mask"]
        targets = batch["input_ids"].repeat(2, 1)  # (2B, L) the clean tokens of both copies
        rate = None if self.mask_prob is not None else batch["dlm_rate"]
        loss, ce, accuracy = dlm_loss(logits, targets, mask, rate)
        metrics = {
            "ce": ce,
            "accuracy": accuracy,
            "masked_tokens": mask.sum().float(),
        }
        return ObjectiveOutput(loss, metrics)


def noisy_logits(model_outputs: Any, batch: Batch | None = None,
                 mask_token_id: int | None = None) -> torch.Tensor:
    """The noisy views' logits (2B, L, V) of a block-diffusion forward; a clear error otherwise
    (no noisy views, a batch that was not preprocessed, a mask id outside the logits)."""
    if batch is not None and "dlm_mask" not in batch:
        raise ValueError(
            "batch has no 'dlm_mask': run manager.preprocess_batch(batch) before the model"
        )
    logits = getattr(model_outputs, "dlm_logits", None)
    if logits is None:
        raise ValueError(
            "the model outputs have no 'dlm_logits' (noisy views): call the model through "
            "run_model(model, batch, manager.requirements()) on the preprocessed DLM batch"
        )
    if mask_token_id is not None and mask_token_id >= logits.shape[-1]:
        raise ValueError(
            f"mask_token_id {mask_token_id} is outside the model's {logits.shape[-1]} "
            "logits: call add_mask_token(tokenizer, model) to resize the embeddings"
        )
    return logits


def resolve_mask_token(mask_token_id: int | None, tokenizer: Any,
                       allow_vocab_mask_token: bool) -> int:
    """The mask id a masking objective uses: the given one, checked to be a dedicated token, or
    ``<|mask|>`` looked up in ``tokenizer``."""
    if mask_token_id is None:
        if tokenizer is None or MASK_TOKEN not in tokenizer.get_added_vocab():
            raise ValueError(
                "DLM needs mask_token_id: call add_mask_token(tokenizer, model) and pass its "
                "id (or pass the tokenizer to create_objective_manager to look it up)"
            )
        mask_token_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if tokenizer is not None:
        check_mask_token(tokenizer, mask_token_id, allow_vocab_token=allow_vocab_mask_token)
    elif not allow_vocab_mask_token:
        raise ValueError(
            f"cannot check that mask_token_id {mask_token_id} is a dedicated token without "
            "the tokenizer: pass tokenizer= (create_objective_manager(..., tokenizer=tok)) or "
            "set allow_vocab_mask_token: true"
        )
    return int(mask_token_id)


def checked_block_size(block_size: int) -> int:
    if block_size < 2:
        raise ValueError(
            f"block_size must be >= 2 (its first token is never masked), got {block_size}"
        )
    return int(block_size)


def with_noisy_views(batch: Batch, mask: torch.Tensor, mask_token_id: int,
                     block_size: int) -> Batch:
    """The batch plus its noisy copies for the block layout: ``dlm_noisy_ids`` (cB, L), the
    clean window repeated with the mask token where ``mask`` (cB, L) is True, ``dlm_mask`` and
    ``dlm_block_size``; ``input_ids`` stays the clean window."""
    input_ids = batch["input_ids"]  # (B, L)
    if "dlm_mask" in batch:
        raise ValueError(
            "batch already has 'dlm_mask': two masking objectives ran on it (dlm and certainty "
            "in one curriculum phase, or the preprocessing twice); give one of them weight 0"
        )
    if input_ids.shape[1] <= 2:
        raise ValueError(
            f"DLM needs sequences longer than 2 tokens (got {input_ids.shape[1]}): the first "
            "position is never masked and token shift needs a preceding position"
        )
    copies = mask.shape[0] // input_ids.shape[0]
    out = dict(batch)
    out["dlm_noisy_ids"] = input_ids.repeat(copies, 1).masked_fill(mask, mask_token_id)
    out["dlm_mask"] = mask
    out["dlm_block_size"] = block_size
    return out
