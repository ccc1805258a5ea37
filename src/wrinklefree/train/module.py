"""The LightningModule: one training step = objectives over student (and teacher) outputs.

Engineering (devices, precision, strategy, logging, checkpoint files) is Lightning's; research
(what the loss is) is the :class:`~wrinklefree.objectives.ObjectiveManager`'s. This module only
wires them together and advances the per-step schedules (quantization lambda, curriculum).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from wrinklefree.data.mixture import MixtureStream, phase_weights
from wrinklefree.data.packing import collate
from wrinklefree.export.gguf import GGUFOptions, round_to_gguf
from wrinklefree.nn import set_quant_lambda
from wrinklefree.objectives import ObjectiveManager, run_model
from wrinklefree.quant import LambdaWarmup
from wrinklefree.teacher import Teacher
from wrinklefree.train.optim import ZClip, build_optimizer, lr_multiplier
from wrinklefree.train.scale import shard_student


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator state of ``device`` (None off CUDA). DLM masks are drawn on the batch's
    device, so a GPU resume is exact only with it. One device, not ``get_rng_state_all``: each
    rank draws on its own GPU, and reading every GPU would open a context on each from each rank.
    """
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def restore_cuda_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    """Restore :func:`cuda_rng_state` on ``device``; a no-op for a CPU checkpoint or a CPU
    resume (nothing draws from a CUDA generator there)."""
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state, device)


class StreamBatches(IterableDataset):
    """Batches of ``batch_size`` windows from the stream (read with ``num_workers=0``)."""

    def __init__(self, stream: MixtureStream, batch_size: int) -> None:
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self):
        windows = iter(self.stream)
        while True:
            yield collate([next(windows) for _ in range(self.batch_size)])


class BitNetModule(L.LightningModule):
    """Trains a converted student with the objectives of ``manager``.

    Args:
        student: the converted model (BitLinear layers).
        manager: objectives, weights and curriculum.
        teacher: frozen full-precision teacher or None.
        stream: the training data stream (for curriculum data switches and resume).
        training: the ``training`` section of the config (optimizer, schedules, budgets).
        total_steps: optimizer steps in the run.
        tokens_per_step: tokens consumed per optimizer step on this rank.
        remixer: optional influence-based remixer of the stream's weights.
        gguf_types: the GGUF types the student ships at (``model.gguf``), or None: at
            ``training.gguf_round_at`` of the run the parts llama.cpp quantizes are rounded to
            them and frozen, and the rest of the run trains around them.
    """

    def __init__(self, student, manager: ObjectiveManager, teacher: Teacher | None,
                 stream: MixtureStream, training: Any, total_steps: int, tokens_per_step: int,
                 remixer=None, gguf_types: GGUFOptions | None = None) -> None:
        super().__init__()
        self.student = student
        self.manager = manager
        self.teacher = teacher
        self.stream = stream
        self.cfg = training
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.remixer = remixer
        lam = training.quant_lambda
        self.lambda_schedule = LambdaWarmup(lam.warmup_steps, lam.shape, lam.start, lam.end)
        z = training.zclip
        self.zclip = ZClip(z.alpha, z.z_thresh, z.warmup, z.max_norm) if z.enabled else None
        self.windows_consumed = stream.windows  # Lightning reads ahead; count what trained
        self._phase = manager.phase_index
        self._clock: float | None = None
        self.gguf_types = gguf_types
        self.round_step = math.ceil((training.gguf_round_at or 0) * total_steps)
        self._rounded = False
        self._frozen: list[torch.nn.Parameter] = []

    # ---- per-step schedules -------------------------------------------------------------
    def _advance_schedules(self) -> None:
        """Bring lambda and the curriculum to the current optimizer step (exact under
        accumulation and resume: both are functions of ``global_step``)."""
        set_quant_lambda(self.student, self.lambda_schedule(self.global_step))
        while self.manager.curriculum is not None and self.manager.step_count < self.global_step:
            self.manager.step()
        if self.manager.phase_index != self._phase:
            self._phase = self.manager.phase_index
            data_config = self.manager.current_phase.data_config
            if data_config:
                self.stream.set_weights(phase_weights(data_config))
        if self.gguf_types is not None and not self._rounded and (
                self.global_step >= self.round_step):
            self._round_to_gguf()

    def _round_to_gguf(self) -> None:
        """Round the parts the GGUF stores in blocks to ``gguf_types`` and freeze them. On
        resume past the step this runs again: the rounded values are a fixed point."""
        self._frozen = list(round_to_gguf(self.student, self.gguf_types).values())
        self._rounded = True

    def on_before_optimizer_step(self, optimizer) -> None:
        """Drop the gradients of the rounded parameters, so the optimizer skips them (AdamW
        steps only parameters with a gradient). They keep ``requires_grad``: DDP's reducer
        waits for a gradient of every parameter it was built with."""
        for param in self._frozen:
            param.grad = None

    # ---- Lightning hooks ----------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.windows_consumed += len(batch["input_ids"])
        self._advance_schedules()
        batch = self.manager.preprocess_batch(batch)
        batch = self.manager.write_rows(batch, self.student)
        needs = self.manager.requirements()
        outputs = run_model(self.student, batch, needs)
        teacher_outputs = self.teacher(batch, needs) if needs.teacher else None
        result = self.manager(outputs, batch, teacher_outputs)
        metrics = {f"train/{k}": v for k, v in result.metrics.items()}
        metrics["train/lambda"] = self.lambda_schedule(self.global_step)
        metrics["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        metrics["train/tokens"] = float((self.global_step + 1) * self.tokens_per_step)
        for name, weight in self.stream.weights.items():
            metrics[f"data/{name}"] = weight
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("loss", result.loss.detach(), prog_bar=True, logger=False)
        return result.loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.log("tok/s", self.tokens_per_step / self.cfg.grad_accum / (now - self._clock),
                     prog_bar=True, logger=True)
        self._clock = now
        if self.remixer is not None:
            record = self.remixer.maybe_remix(self.global_step, self.student)
            if record is not None:
                self.log_dict({f"remix/{k}": v for k, v in record["weights"].items()})

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.student(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              use_cache=False).logits[:, :-1]  # (B, L-1, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["input_ids"][:, 1:].flatten())
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.log("val/ppl", torch.exp(loss), prog_bar=True, sync_dist=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if self.zclip is not None:
            norm = self.zclip(self.student.parameters())
            self.log("train/grad_norm", norm)

    def configure_model(self) -> None:
        """Shard the student with FSDP2 under ``trainer=fsdp`` (Lightning's ModelParallelStrategy
        sets ``device_mesh``; every other strategy leaves it None and nothing happens)."""
        if self.device_mesh is not None:
            shard_student(self.student, self.device_mesh.device_type)

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = build_optimizer(self.student, cfg.optimizer, cfg.lr, cfg.weight_decay,
                                    cfg.betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, cfg.scheduler, self.total_steps, cfg.warmup_steps,
                                       cfg.decay_ratio, cfg.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wrinklefree"] = {
            "manager": self.manager.state_dict(),
            # rewound to the windows actually trained on: Lightning has fetched ahead
            "data": self.stream.state_dict(windows=self.windows_consumed),
            "zclip": None if self.zclip is None else self.zclip.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng_state(self.device),
            "remix_history": None if self.remixer is None else self.remixer.history,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["wrinklefree"]
        self.manager.load_state_dict(state["manager"])
        self._phase = self.manager.phase_index
        self.stream.load_state_dict(state["data"])
        self.windows_consumed = self.stream.windows
        if self.zclip is not None and state["zclip"] is not None:
            self.zclip.load_state_dict(state["zclip"])
        torch.set_rng_state(state["torch_rng"])
        restore_cuda_rng_state(state.get("cuda_rng"), self.device)
        if self.remixer is not None and state["remix_history"]:
            self.remixer.history = list(state["remix_history"])
