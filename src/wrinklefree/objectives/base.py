"""What every objective shares: the base class, its output, what a step needs from the model,
and the small tensor helpers (next-token targets, vocabulary matching, distillation KL).

Conventions (all objectives): ``labels`` are *unshifted* (``labels[i]`` is token ``i`` or -100), so
the logits at position ``i`` are scored against ``labels[i + 1]``. Shifting the targets instead of
the logits keeps the (B, L, V) logits uncopied until the valid rows are gathered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

Batch = dict[str, Any]


@dataclass
class Requirements:
    """What the model call of the current step must produce (see :func:`run_model`).

    Attributes:
        teacher: a teacher forward is needed.
        hidden_states: ``output_hidden_states=True`` (layerwise / LRC objectives).
        attentions: attention maps (forces eager attention; sdpa silently returns none).
        qkv_layers: decoder layers whose q/k/v projection outputs are captured (negative indices
            count from the last layer, so they mean the same depth for a deeper teacher).
    """

    teacher: bool = False
    hidden_states: bool = False
    attentions: bool = False
    qkv_layers: list[int] = field(default_factory=list)

    def merge(self, other: Requirements) -> Requirements:
        return Requirements(
            teacher=self.teacher or other.teacher,
            hidden_states=self.hidden_states or other.hidden_states,
            attentions=self.attentions or other.attentions,
            qkv_layers=sorted(set(self.qkv_layers) | set(other.qkv_layers)),
        )


@dataclass
class ObjectiveOutput:
    """An objective's unweighted scalar loss and its detached scalar metrics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """One training loss with one formula.

    Subclasses set ``name`` (its key in configs and metrics), the ``requires_*`` flags and
    implement :meth:`forward`. Objectives hold no parameters and never touch devices, loggers or
    optimizers; the :class:`~wrinklefree.objectives.ObjectiveManager` only calls them (and their
    :meth:`preprocess_batch`) while their weight is > 0.
    """

    name: ClassVar[str]
    requires_teacher: ClassVar[bool] = False
    requires_hidden_states: ClassVar[bool] = False
    requires_attentions: ClassVar[bool] = False
    modifies_input: ClassVar[bool] = False
    writes_rows: ClassVar[bool] = False  # the student writes rows for it (:meth:`write`)
    reads_noisy_view: ClassVar[bool] = False  # reads the DLM noisy views (``dlm_logits``)

    def requirements(self) -> Requirements:
        return Requirements(
            teacher=self.requires_teacher,
            hidden_states=self.requires_hidden_states,
            attentions=self.requires_attentions,
        )

    def preprocess_batch(self, batch: Batch) -> Batch:
        """Return the batch the model should see (only input-modifying objectives change it)."""
        return batch

    def write(self, batch: Batch, student: Any) -> Batch:
        """Return the batch with rows the student writes itself (on-policy objectives only),
        after :meth:`preprocess_batch`."""
        return batch

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        raise NotImplementedError

    def __call__(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        return self.forward(model_outputs, batch, teacher_outputs)

    def _teacher(self, teacher_outputs: Any) -> Any:
        if teacher_outputs is None:
            raise ValueError(
                f"objective '{self.name}' needs teacher outputs: pass a Teacher's output as "
                "teacher_outputs (manager.requirements().teacher says when)"
            )
        return teacher_outputs

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L): the target of position i is ``labels[i + 1]``; the last is ignored."""
    pad = labels.new_full((labels.shape[0], 1), IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)


def next_position_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B, L): True at i when ``mask[i + 1]`` (the logits that predict it)."""
    return torch.cat([mask[:, 1:], mask.new_zeros((mask.shape[0], 1))], dim=1)


def token_mask(batch: Batch, like: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: real tokens (``attention_mask`` != 0, or every position of a packed window)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return mask.bool()


def match_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Trim the student's logits to the teacher's vocabulary.

    A DLM student has an extra ``<|mask|>`` row and models may pad their embedding matrix; the
    rows beyond the teacher's vocabulary are not part of the distribution being distilled.
    """
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if v_t > v_s:
        raise ValueError(
            f"teacher logits have {v_t} entries but the student's only {v_s}: the teacher's "
            "vocabulary must not be larger; if it is padded, build Teacher(model, tokenizer=...) "
            "so its padded logits are trimmed to the tokenizer's length"
        )
    return student_logits[..., :v_t]


def distill_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    reverse: float = 0.0,
) -> torch.Tensor:
    """(N, V), (N, V) -> (N,): [(1-r)·KL(p || q) + r·KL(q || p)] · T² per row, p = softmax(t/T),
    q = softmax(s/T) (Hinton et al. 2015; reverse KL as in MiniLLM, arXiv 2306.08543 Eq. 1).

    The T² keeps gradient magnitudes independent of the temperature. The forward KL (r = 0) makes
    the student cover all of the teacher's mass; the reverse KL (r = 1) penalises the student's
    mass where the teacher has little (mode seeking).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # each direction only when its share is not 0: the (N, V) products are the cost
    forward_kl = (log_p.exp() * (log_p - log_q)).sum(-1) if reverse < 1.0 else 0.0  # KL(p || q)
    backward_kl = (log_q.exp() * (log_q - log_p)).sum(-1) if reverse > 0.0 else 0.0  # KL(q || p)
    return ((1.0 - reverse) * forward_kl + reverse * backward_kl) * temperature**2


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (broadcastable) is True; 0 (with a graph) when empty."""
    mask = mask.expand_as(values)
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1)


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A 0 that is still connected to the graph (an empty selection must not break backward)."""
    return like.sum() * 0.0


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
