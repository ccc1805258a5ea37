"""Certainty-forcing distillation (dParallel, Chen et al. 2025, arXiv 2509.26488): a diffusion
student learns to draft its own decoding in parallel, and to be sure where it is right.

dParallel's observation: a masked-diffusion LM predicts every masked position at once, but its
*certainty* converges left to right, one position after the known text, so a confidence
threshold commits about one token per step. Certainty-forcing distillation trains the model on
its own decoding trajectories (greedy continuations: the targets are a deterministic function of
the prefix, unlike natural text) with two terms on the masked positions of a block whose
earlier blocks are clean (the paper's semi-autoregressive masking):

- consistency: the cross-entropy toward the trajectory's tokens (follow its own decoding);
- certainty: the entropy of the temperature-scaled prediction, only where the greedy prediction
  already equals the trajectory's token (sharpen what is right; never force certainty on an
  error).

Our block layout (:mod:`wrinklefree.block_diffusion`) gives every block of a window that
context at once: its noisy copy sees the clean text of the earlier blocks. Within a block the
masks are *suffixes*: a cut offset c ~ U{1, ..., B-1} per block and copy, offsets >= c masked,
which is exactly the state of a block in self-speculative decoding (:mod:`wrinklefree.
speculative`: the block's known prefix, the rest masked) and the first denoising step of
threshold decoding (c = 1). The data are the student's own trajectories
(``first_token: text``, ``temperature: 0`` sources, :mod:`wrinklefree.data.generated`); the
clean view keeps reading the window causally, so logits KD beside this objective holds the AR
student (the verifier) in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from wrinklefree.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    check_positive,
    next_position_mask,
    zero_loss,
)
from wrinklefree.objectives.dlm import (
    checked_block_size,
    maskable_positions,
    noisy_logits,
    resolve_mask_token,
    with_noisy_views,
)


def suffix_masks(maskable: torch.Tensor, position_ids: torch.Tensor, block_size: int,
                 copies: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) maskable, (B, L) positions -> (copies·B, L) bool: per block (of the window's
    pieces of blocks) and copy a cut offset c ~ U{1, ..., block_size - 1}; offsets >= c masked
    (where maskable). Row k·B + b is copy k of window b, the DLM batch convention."""
    offset = position_ids % block_size  # (B, L)
    starts = offset == 0
    starts[:, 0] = True  # a window may open inside a block
    block = starts.long().cumsum(-1) - 1  # (B, L) index of the block piece in the window
    size, length = maskable.shape
    cuts = torch.randint(1, block_size, (copies, size, length), generator=generator,
                         device=maskable.device)  # one per block piece (L is enough)
    cut = cuts.gather(-1, block.expand(copies, size, length))  # (copies, B, L)
    return ((offset >= cut) & maskable).reshape(copies * size, length)


def certainty_forcing_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    entropy_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logits (cB, L, V) of the noisy views, targets (cB, L) the trajectory's tokens, mask
    (cB, L) True where masked -> (loss, metrics). Token shift: the logits at i - 1 predict i.

    loss = CE + β · H_T, CE the mean cross-entropy over the masked positions and H_T the mean
    entropy of softmax(logits / T) over the masked positions whose argmax is the target (0 when
    there are none).
    """
    predict = next_position_mask(mask)  # (cB, L) logits at i - 1 for masked i
    if not predict.any():
        zero = zero_loss(logits)
        return zero, {"ce": zero.detach(), "entropy": zero.detach(),
                      "accuracy": zero.detach(), "masked_tokens": zero.detach()}
    rows = logits[predict].float()  # (N, V)
    wanted = targets[:, 1:][mask[:, 1:]]  # (N,) same row-major order as ``predict``
    ce = F.cross_entropy(rows, wanted)  # dParallel (arXiv 2509.26488) L_Consistency
    correct = rows.argmax(-1) == wanted  # (N,) positions already predicted right
    log_p = F.log_softmax(rows[correct] / temperature, dim=-1)  # (n, V)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (n,) H(softmax(z / T))
    # dParallel L_Certainty: mean entropy of softmax(z/T) over the correct masked positions
    certainty = entropy.mean() if bool(correct.any()) else zero_loss(logits)
    loss = ce + entropy_weight * certainty  # dParallel: L = L_Consistency + β·L_Certainty
    metrics = {"ce": ce.detach(), "entropy": certainty.detach(),
               "accuracy": correct.float().mean(), "masked_tokens": predict.sum().float()}
    return loss, metrics


class CertaintyForcingObjective(Objective):
    """dParallel's certainty-forcing loss on suffix-masked noisy views of each block.

    ``preprocess_batch`` adds two noisy copies of the clean window (``dlm_noisy_ids``,
    ``dlm_mask``, ``dlm_block_size``, as :class:`~wrinklefree.objectives.dlm.DLMObjective`
    does, so ``run_model`` runs the block layout and TCS can read the same views), each block
    masked from an independent random offset on. It replaces ``dlm`` in a phase: both active at
    once is refused (one masking per batch).

    Args:
        mask_token_id: the dedicated mask token (looked up with ``tokenizer=`` when None).
        block_size: the diffusion block size (the student's, and the decoders').
        temperature: T of the entropy term (dParallel's code uses 0.5: the entropy of a sharpened
            distribution, which pushes the top token's probability up faster).
        entropy_weight: β, the certainty term's weight (dParallel's code: 2).
        tokenizer: checks ``mask_token_id`` (:func:`~wrinklefree.objectives.check_mask_token`).
        allow_vocab_mask_token: accept an ordinary token as the mask.
    """

    name = "certainty"
    modifies_input = True
    reads_noisy_view = True

    def __init__(
        self,
        mask_token_id: int | None = None,
        block_size: int = 32,
        temperature: float = 0.5,
        entropy_weight: float = 2.0,
        tokenizer: Any = None,
        allow_vocab_mask_token: bool = False,
    ) -> None:
        check_positive("temperature", temperature)
        check_positive("entropy_weight", entropy_weight, allow_zero=True)
        self.mask_token_id = resolve_mask_token(mask_token_id, tokenizer, allow_vocab_mask_token)
        self.block_size = checked_block_size(block_size)
        self.temperature = float(temperature)
        self.entropy_weight = float(entropy_weight)

    def preprocess_batch(self, batch: Batch) -> Batch:
        input_ids = batch["input_ids"]  # (B, L)
        positions = batch.get("position_ids")
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        positions = positions.expand_as(input_ids)
        mask = suffix_masks(maskable_positions(batch, self.block_size), positions,
                            self.block_size)  # (2B, L)
        return with_noisy_views(batch, mask, self.mask_token_id, self.block_size)

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        logits = noisy_logits(model_outputs, batch, self.mask_token_id)  # (2B, L, V)
        mask = batch["dlm_mask"]
        targets = batch["input_ids"].repeat(mask.shape[0] // batch["input_ids"].shape[0], 1)
        loss, metrics = certainty_forcing_loss(logits, targets, mask, self.temperature,
                                               self.entropy_weight)
        return ObjectiveOutput(loss, metrics)
