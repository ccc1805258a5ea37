"""`wf train`: build model, teacher, data and objectives from a config and run Lightning.

Flow (one way): config -> student/teacher/tokenizer -> data stream -> objective manager ->
Lightning Trainer -> checkpoints -> ``<run_dir>/final`` (a ``load_bitnet`` folder) + report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from wrinklefree.block_diffusion import record_block_size
from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.data.config import DataConfig
from wrinklefree.data.heldout import TextTooShortError, domain_windows
from wrinklefree.data.influence import InfluenceRemixer, build_probe_batch
from wrinklefree.data.mixture import build_train_stream, build_val_windows
from wrinklefree.data.packing import collate
from wrinklefree.data.sources import source_files
from wrinklefree.errors import OneLineWarning, UserInputError, write_failure
from wrinklefree.eval.report import evaluate_model, format_report, ratios_to_teacher
from wrinklefree.export.gguf import GGUFOptions, record_gguf_types, round_to_gguf
from wrinklefree.export.size import storage_report
from wrinklefree.files import remove_orphans, staged_file
from wrinklefree.models import check_context, load_model, load_tokenizer
from wrinklefree.nn import bitnet_config_of, set_quant_lambda
from wrinklefree.objectives import add_mask_token, create_objective_manager
from wrinklefree.teacher import Teacher
from wrinklefree.train.checkpoint import (
    AtomicCheckpointIO,
    RunCheckpoint,
    RunLock,
    latest_intact_checkpoint,
    refuse_or_clear_existing_run,
)
from wrinklefree.train.config import check_resume_checkpoint, validate
from wrinklefree.train.module import BitNetModule, StreamBatches
from wrinklefree.train.reconstruct import reconstruct_layers
from wrinklefree.train.resume import (
    CONFIG_NAME,
    REPORT_NAME,
    check_resumed_config,
    config_record,
    finished_steps,
    rows_before_training,
)
from wrinklefree.train.scale import gathered_student, is_sharded

log = logging.getLogger("wrinklefree.train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_student(cfg: DictConfig, tokenizer) -> torch.nn.Module:
    """Load the source and convert it (unless it already is a BitNet checkpoint)."""
    m = cfg.model
    student = load_model(m.source, dtype=DTYPES[m.dtype], attn_implementation=m.attn_implementation)
    options = OmegaConf.to_container(m.convert, resolve=True)
    recorded = bitnet_config_of(student)
    if recorded is None:
        convert_model_to_bitnet(student, tokenizer=tokenizer, calibrate=m.calibration_batches > 0,
                                num_calibration_batches=m.calibration_batches, **options)
    elif options.get("lrc_rank") is not None and recorded.lrc_rank is None:
        # an already converted checkpoint (e.g. after stage 2) gets its low-rank corrections now
        from wrinklefree.nn.lrc import convert_bitlinear_to_lrc

        rank, init = options["lrc_rank"], options.get("lrc_init", "svd_residual")
        convert_bitlinear_to_lrc(student, rank, init)  # records rank and init
    if m.train_only_lrc:
        from wrinklefree.nn.lrc import freeze_model_except_lrc

        freeze_model_except_lrc(student)
    if m.dlm:
        add_mask_token(tokenizer, student)
    return student


def apply_trainer_options(student: torch.nn.Module, cfg: DictConfig) -> None:
    """Activation checkpointing and torch.compile, both in place (parameter names unchanged)."""
    if cfg.trainer.activation_checkpointing:
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.trainer.compile:
        student.compile()


def build_teacher(cfg: DictConfig, tokenizer) -> Teacher | None:
    source = cfg.model.teacher
    if source is None:
        return None
    path = cfg.model.source if source == "source" else source
    model = load_model(path, dtype=DTYPES[cfg.model.dtype])
    teacher_tokenizer = load_tokenizer(path)
    # frozen and replicated on every rank (never sharded): under bf16 precision keep it in bf16,
    # half the memory, the dtype its matmuls run in under autocast anyway
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    return Teacher(model, tokenizer=teacher_tokenizer, student_tokenizer=tokenizer, dtype=dtype)


def total_steps_of(cfg: DictConfig, world: int) -> int:
    t = cfg.training
    tokens_per_step = t.batch_size * t.grad_accum * cfg.data.seq_len * world
    if t.max_tokens:
        return max(1, math.ceil(t.max_tokens / tokens_per_step))
    if t.max_steps is None or t.max_steps < 0:
        raise ValueError(f"training.max_steps={t.max_steps}: set it (>= 0; 0 = convert only) or "
                         "set training.max_tokens")
    return int(t.max_steps)


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    from wrinklefree.train.metrics_log import MetricsCSVLogger

    # one CSV part per launch: a resumed run appends a part instead of overwriting the log
    part = f"part-{len(list((run_dir / 'logs').glob('part-*'))):02d}"
    loggers: list = [MetricsCSVLogger(run_dir, name="logs", version=part)]
    if cfg.logging.tensorboard:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    if cfg.logging.wandb:
        wandb_logger = wandb_logger_or_none(cfg.logging.project, run_dir)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def wandb_logger_or_none(project: str, run_dir: Path):
    """A WandbLogger, or None with one clear warning when wandb cannot be used (never raises)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        warnings.warn("wandb logging was requested but the wandb package is not installed; "
                      "logging locally only (CSV + TensorBoard)", OneLineWarning,
                      stacklevel=2)
        return None
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled")
    if not offline and not os.environ.get("WANDB_API_KEY"):
        warnings.warn("wandb logging was requested but WANDB_API_KEY is not set and WANDB_MODE is "
                      "not offline; logging locally only (CSV + TensorBoard)", stacklevel=2)
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project=project, save_dir=str(run_dir), offline=offline)
    except Exception as err:  # any wandb start-up failure must not stop training
        warnings.warn(f"wandb could not start ({err}); logging locally only", OneLineWarning,
                      stacklevel=2)
        return None


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue: for ``auto`` the newest one of run_dir that reads back whole
    (a damaged ``last.ckpt`` falls back, with a warning, to the newest intact ``step-N.ckpt``)."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = latest_intact_checkpoint(run_dir / "checkpoints")
        if found is not None:
            check_resume_checkpoint(found, f"resume=auto: {found}",
                                    "delete it to continue from an earlier checkpoint, or start "
                                    "over with overwrite=true")
        return None if found is None else str(found)
    path = Path(cfg.resume)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist (use resume=auto to "
                                "continue the latest checkpoint of run_dir, if any)")
    return str(path)


def _evaluate(model, tokenizer, cfg: DictConfig,
              windows: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Perplexity per evaluation domain on the test and validation windows (``windows``:
    ``{split: {domain: (N, L)}}``), greedy samples and their degeneration (eval/report.py)."""
    return evaluate_model(model, tokenizer, windows["test"], list(cfg.training.sample_prompts),
                          cfg.training.sample_tokens, cfg.training.sample_repetition_penalty,
                          validation=windows["validation"])


def train(config: DictConfig | dict) -> Path:
    """Run the training described by ``config``; returns the run folder. A multi-process run
    ends by destroying its process group."""
    import lightning as L

    cfg = validate(config)
    data_cfg: DataConfig = OmegaConf.to_object(cfg.data)  # checked by validate
    run_dir = Path(cfg.run_dir).expanduser()
    _check_data_sources(data_cfg)
    _quiet_lightning()
    L.seed_everything(cfg.training.seed, workers=True, verbose=False)
    trainer = _build_trainer(cfg, run_dir)  # first: it knows this process's rank and the world
    # rank 0 owns the folder (DDP children re-run this function and must not lock or clear it)
    with RunLock(run_dir) if trainer.is_global_zero else contextlib.nullcontext():
        if trainer.is_global_zero:
            refuse_or_clear_existing_run(run_dir, cfg.resume, cfg.overwrite)
        # read-only, so every rank decides alike: a finished run is left as it is
        record_config = not cfg.resume or check_resumed_config(cfg, run_dir,
                                                               trainer.is_global_zero)
        total_steps = total_steps_of(cfg, trainer.world_size)
        done = finished_steps(run_dir) if cfg.resume == "auto" else None
        if done is not None and done >= total_steps:
            if trainer.is_global_zero:
                print(f"run_dir {run_dir} holds a finished run ({done} steps; final/ and "
                      f"{REPORT_NAME}): nothing to do. To train further, resume=auto with a "
                      "larger training.max_steps (or max_tokens); to start over, overwrite=true",
                      flush=True)
            return run_dir
        # before anything is written: a damaged or foreign checkpoint is refused unread
        resume = _resume_path(cfg, run_dir)
        if trainer.is_global_zero:
            remove_orphans(run_dir / "checkpoints")
            print(f"run folder: {run_dir}", flush=True)
        return _train_locked(cfg, data_cfg, run_dir, trainer, resume, total_steps,
                             record_config)


def _train_locked(cfg: DictConfig, data_cfg: DataConfig, run_dir: Path, trainer,
                  resume: str | None, total_steps: int, record_config: bool) -> Path:
    """Build everything, then write config.yaml and attach the loggers (a failed launch leaves
    the folder as it was), then train and finish; runs while this process holds the run folder.
    ``record_config``: a fresh run or a resume that changed the run's length."""
    rank, world = trainer.global_rank, trainer.world_size
    seconds: dict[str, float] = {}  # wall time by phase, in the report: where a run's time goes
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model.source)
    # data is tokenised with the source's own vocabulary: a DLM student's <|mask|> (added to
    # `tokenizer` by build_student) is a model-side token no text may turn into, and the token
    # cache (teacher samples included) stays shared with AR runs of the same source
    data_tokenizer = copy.deepcopy(tokenizer)
    student = build_student(cfg, tokenizer)
    check_context(student, data_cfg.seq_len, "data.seq_len",
                  "lower data.seq_len to at most the model's context")
    teacher = build_teacher(cfg, tokenizer)
    trainer.fit_loop.epoch_loop.max_steps = total_steps  # known only now (max_tokens, world)
    manager = create_objective_manager(
        {"objectives": cfg.objectives, "curriculum": cfg.curriculum}, total_steps,
        tokenizer=tokenizer)
    if manager.block_size() is not None:  # decoders default to it (wf generate, wf bench dlm)
        record_block_size(student, manager.block_size())
    stream = build_train_stream(data_cfg, data_tokenizer, rank=rank, world_size=world)
    remixer = None
    with _seq_len_named(data_cfg.seq_len):  # the held-out texts hold no window that long
        val = build_val_windows(data_tokenizer, data_cfg.seq_len, cfg.training.val_windows)
        if data_cfg.remix.enabled:
            # after the validation windows: remixing never tunes toward reported text
            probe = build_probe_batch(data_tokenizer, data_cfg.seq_len, data_cfg.remix,
                                      skip=cfg.training.val_windows)
            remixer = InfluenceRemixer(stream, probe, data_cfg.remix)
        # the same windows per domain (held-out ASV, general English) before and after
        # training: the test windows the report prints, and validation windows (other
        # documents) to choose on
        eval_windows = {
            "test": domain_windows(data_tokenizer, data_cfg.seq_len, cfg.training.eval_windows),
            "validation": domain_windows(data_tokenizer, data_cfg.seq_len,
                                         cfg.training.val_windows, split="validation")}
    if trainer.is_global_zero and record_config:  # all built: the launch is good, record it
        _write_config(cfg, run_dir)
    trainer.loggers = _loggers(cfg, run_dir)  # after the clearing: the log part counts on

    # a resume keeps the rows measured before training (it does not measure them again)
    report: dict[str, Any] = {**(rows_before_training(run_dir) if resume else {}),
                              "run_dir": str(run_dir), "total_steps": total_steps,
                              "world_size": world}
    report["windows"] = {split: {d: list(w.shape) for d, w in per_domain.items()}
                         for split, per_domain in eval_windows.items()}
    report["seconds"] = seconds
    seconds["models and data"] = round(time.perf_counter() - started, 1)
    if cfg.training.eval_before and resume is None and rank == 0:
        if teacher is not None:
            with _timed(seconds, "teacher eval"):
                report["teacher"] = _evaluate(teacher.model, tokenizer, cfg, eval_windows)
            _print_row("teacher (full precision)", report["teacher"])
        set_quant_lambda(student, cfg.training.quant_lambda.end)
        with _timed(seconds, "converted eval"):
            report["converted"] = _evaluate(student, tokenizer, cfg, eval_windows)
        _print_row("converted student (no training)", report["converted"])

    if cfg.training.reconstruct.epochs > 0 and resume is None:
        with _timed(seconds, "reconstruction"):
            report["reconstruction_errors"] = _reconstruct(
                student, teacher, data_tokenizer, cfg, data_cfg, trainer.strategy.root_device)
        if cfg.training.eval_before and rank == 0:
            set_quant_lambda(student, cfg.training.quant_lambda.end)
            with _timed(seconds, "reconstructed eval"):
                report["reconstructed"] = _evaluate(student, tokenizer, cfg, eval_windows)
            _print_row("reconstructed student (layer by layer)", report["reconstructed"])

    if total_steps == 0:  # convert only (stage 1)
        _save_final(run_dir, student, tokenizer, cfg)
        return _finish(run_dir, student, tokenizer, cfg, eval_windows, report)
    apply_trainer_options(student, cfg)
    if cfg.training.snapshot_every is not None:
        trainer.callbacks.append(ModelSnapshots(run_dir, cfg.training.snapshot_every,
                                                total_steps, tokenizer, cfg))
    tokens_per_step = cfg.training.batch_size * cfg.training.grad_accum * data_cfg.seq_len
    rounding = gguf_types(cfg)
    if rounding is not None and _is_fsdp(cfg):
        # a shard's rows of V^T are not whole GGUF blocks: round the gathered model at the end
        warnings.warn("trainer=fsdp: the model.gguf parts are rounded once, after training (no "
                      "steps train around them); trainer=ddp rounds at training.gguf_round_at",
                      OneLineWarning, stacklevel=1)
        rounding = None
    module = BitNetModule(student, manager, teacher, stream, cfg.training, total_steps,
                          tokens_per_step, remixer, rounding)
    # a private generator: creating the loader's iterator must not draw from the global RNG,
    # or a resumed run would mask DLM batches differently from an uninterrupted one
    train_loader = torch.utils.data.DataLoader(StreamBatches(stream, cfg.training.batch_size),
                                               batch_size=None, num_workers=0,
                                               generator=torch.Generator())
    val_loader = torch.utils.data.DataLoader(val, batch_size=cfg.training.batch_size,
                                             collate_fn=collate)
    student.train()
    with warnings.catch_warnings():
        # refused unless resuming or overwriting, so a non-empty checkpoints/ is expected here
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        with _timed(seconds, "training"):
            trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    if world > 1 and not is_sharded(student):  # replicas (ddp); fsdp ranks hold shards
        report["ddp_weight_checksums"] = _rank_checksums(trainer, student)
    whole = gathered_student(student, trainer.strategy.root_device)  # fsdp: one whole copy
    if trainer.is_global_zero:
        _save_final(run_dir, whole, tokenizer, cfg)
    _save_last_step(trainer, run_dir)  # after final/: see RunCheckpoint
    if trainer.is_global_zero:
        _finish(run_dir, whole, tokenizer, cfg, eval_windows, report)
    if torch.distributed.is_initialized():
        # each rank leaves cleanly: gloo can abort (SIGABRT) at interpreter exit otherwise
        torch.distributed.destroy_process_group()
    return run_dir


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Record the wall time of the block as ``seconds[phase]`` (the report's time line)."""
    start = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - start, 1)


@contextlib.contextmanager
def _seq_len_named(seq_len: int) -> Iterator[None]:
    """Name data.seq_len and its fix when the held-out text has no window of that length."""
    try:
        yield
    except TextTooShortError as err:
        raise UserInputError(f"data.seq_len={seq_len}: {err}; lower data.seq_len") from None


def _reconstruct(student, teacher: Teacher | None, data_tokenizer, cfg: DictConfig,
                 data_cfg: DataConfig, device: torch.device) -> list[float]:
    """Layer-by-layer reconstruction from the teacher on the first training batches (every rank
    computes the same thing from the same batches, so replicas stay identical)."""
    if teacher is None:
        raise UserInputError("training.reconstruct.epochs > 0 needs a teacher: set model.teacher "
                             "(e.g. model.teacher=source) or training.reconstruct.epochs=0")
    options = cfg.training.reconstruct
    # fully ternary while reconstructing: the layers learn the function they will have
    set_quant_lambda(student, cfg.training.quant_lambda.end)
    stream = build_train_stream(data_cfg, data_tokenizer, rank=0, world_size=1)
    batches = iter(StreamBatches(stream, cfg.training.batch_size))
    calibration = [next(batches) for _ in range(options.batches)]
    errors = reconstruct_layers(student, teacher.model, calibration, epochs=options.epochs,
                                lr=options.lr, device=device,
                                progress=cfg.logging.progress_bar)
    print(f"reconstructed {len(errors)} layers: relative output error {errors[0]:.3f} (first) "
          f"... {errors[-1]:.3f} (last)", flush=True)
    return errors


def _check_data_sources(data_cfg: DataConfig) -> None:
    """Fail on a missing local file now, before anything loads or is written (the stream itself
    is built only after the model)."""
    for source in data_cfg.sources:
        if source.path and not source.is_asv:
            source_files(source)  # raises FileNotFoundError naming the source and path


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    """``config.yaml``: the resolved config with secret-looking values scrubbed."""
    text = OmegaConf.to_yaml(OmegaConf.create(config_record(cfg)))
    with staged_file(run_dir / CONFIG_NAME) as staged:  # a full disk keeps the old one whole
        staged.write_text(text)


class _DropTips(logging.Filter):
    """Drops Lightning's advertising tips ("💡 Tip: ... litlogger"): noise in every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def _quiet_lightning() -> None:
    """Silence Lightning's tips and its own internal deprecation notice (once per process):
    neither is about the user's run."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropTips())
    # lightning 2.6.6 against torch 2.13: its pytree helper uses a deprecated torch check
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _progress_bar():
    """Lightning's TQDM bar without ``v_num`` (the logger's version: "-00_", meaningless here)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class ProgressBar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module) -> dict:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return ProgressBar(refresh_rate=1)


def _build_trainer(cfg: DictConfig, run_dir: Path):
    """The Lightning Trainer; its loggers are attached by the caller once the folder is safe."""
    import lightning as L

    # no version counter: a name clash must overwrite, never leave last-v1.ckpt beside a stale
    # last.ckpt that resume=auto would pick. last.ckpt is a link to the step-N.ckpt just written,
    # not a second copy: the demo's checkpoints are 1.7 GB each (written once, stored once)
    checkpoint = RunCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step-{step}", monitor="step", mode="max",
        save_top_k=cfg.training.keep_last, every_n_train_steps=cfg.training.checkpoint_every,
        save_last="link", auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list = [checkpoint]
    if cfg.logging.progress_bar:
        callbacks.append(_progress_bar())
    return L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes, strategy=_strategy(cfg), precision=cfg.trainer.precision,
        max_steps=-1, accumulate_grad_batches=cfg.training.grad_accum,
        val_check_interval=cfg.training.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.logging.progress_bar, log_every_n_steps=1,
        default_root_dir=run_dir, use_distributed_sampler=False, enable_model_summary=False,
    )


@torch.no_grad()
def _rank_checksums(trainer, student) -> list[float]:
    """Sum of all student weights on every rank (DDP keeps replicas identical; this shows it)."""
    local = torch.tensor([sum(float(p.double().sum()) for p in student.parameters())],
                         dtype=torch.float64)
    gathered = trainer.strategy.all_gather(local.to(trainer.strategy.root_device))
    return [float(x) for x in gathered.flatten().cpu()]


def gguf_types(cfg: DictConfig) -> GGUFOptions | None:
    """The ``model.gguf`` types the student is rounded to, or None (training.gguf_round_at
    null: it stays in float)."""
    return None if cfg.training.gguf_round_at is None else OmegaConf.to_object(cfg.model.gguf)


def _save_final(run_dir: Path, student, tokenizer, cfg: DictConfig) -> None:
    """Save ``final/`` (loadable with load_bitnet), fully ternary, with its sampling settings,
    rounded to ``model.gguf`` (a no-op where training already did)."""
    if gguf_types(cfg) is not None:
        round_to_gguf(student, gguf_types(cfg))
    _save_model(run_dir / "final", student, tokenizer, cfg)


def _save_model(folder: Path, student, tokenizer, cfg: DictConfig) -> None:
    """Save ``student`` as a model folder at the final quantization strength (``final/`` and
    the snapshots)."""
    set_quant_lambda(student, cfg.training.quant_lambda.end)
    if gguf_types(cfg) is not None:  # a snapshot taken before the rounding step exports (and is
        record_gguf_types(student, gguf_types(cfg))  # sized) at the types its run ships
    if getattr(student, "generation_config", None) is not None:
        # the decoding of the report's samples travels with the model (generation_config.json):
        # `wf generate`, `wf chat`, `wf export` and transformers' generate() start from it
        student.generation_config.repetition_penalty = cfg.training.sample_repetition_penalty
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class ModelSnapshots(Callback):
    """Save the student as a model folder every ``every`` optimizer steps
    (``snapshots/step-N``, loadable like ``final/``; the last step is ``final/``): quality or
    decoding speed against the tokens trained on, from one run (``wf eval`` / ``wf bench`` on
    each). Rank 0 saves; the next step sets the quantization strength back."""

    def __init__(self, run_dir: Path, every: int, total_steps: int, tokenizer,
                 cfg: DictConfig) -> None:
        self.folder, self.every, self.total_steps = run_dir / "snapshots", every, total_steps
        self.tokenizer, self.cfg = tokenizer, cfg

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        target = self.folder / f"step-{step}"
        if step % self.every or step >= self.total_steps or target.exists():
            return
        if trainer.is_global_zero:
            _save_model(target, pl_module.student, self.tokenizer, self.cfg)


def _save_last_step(trainer, run_dir: Path) -> None:
    """The last step's full training state (for resume=auto to train the run further). A full
    or unwritable disk costs only that: ``final/`` is saved, the run goes on to its report, and
    one line says so (the earlier checkpoints stay, the failed one leaves no partial file)."""
    try:
        trainer.checkpoint_callback.save_last_step(trainer)
    except Exception as err:
        failure = write_failure(err)
        if failure is None:
            raise
        reason, fix = failure
        warnings.warn(f"could not write the last checkpoint to {run_dir / 'checkpoints'} "
                      f"({reason}); final/ is saved and the run finishes, but resume=auto can "
                      f"train it further only from an earlier checkpoint: {fix}", OneLineWarning,
                      stacklevel=2)


def _finish(run_dir: Path, student, tokenizer, cfg: DictConfig,
            eval_windows: dict[str, dict[str, torch.Tensor]],
            report: dict[str, Any]) -> Path:
    """Evaluate the saved ``final/`` model, write report.json (last: it marks the run finished)
    and the plot."""
    final = run_dir / "final"
    # what the student stores and what `wf export final/ x.gguf` writes (its default types:
    # model.gguf's where it was rounded to them)
    report["storage"] = storage_report(student, tokenizer_dir=final, name=final.name)
    if cfg.training.max_steps != 0:
        with _timed(report.setdefault("seconds", {}), "trained eval"):
            report["trained"] = _evaluate(student, tokenizer, cfg, eval_windows)
        _print_row("trained student", report["trained"])
    report["ratio_to_teacher"] = ratios_to_teacher(report)  # None: the teacher was not evaluated
    print(format_report(report), flush=True)
    if cfg.training.max_steps != 0:
        try:
            from wrinklefree.train.plot import plot_run

            plot_run(run_dir)
        except Exception as err:  # a plot must never cost the run
            log.warning("could not plot %s: %s", run_dir, err)
    (run_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    print(f"run folder: {run_dir} (final model in {final})")
    return run_dir


def _is_fsdp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.strategy
    return strategy == "fsdp" or (isinstance(strategy, DictConfig)
                                  and strategy.get("name") == "fsdp")


def _strategy(cfg: DictConfig):
    """A strategy name ('auto', 'ddp', ...) or, for 'fsdp', Lightning's ModelParallelStrategy
    (FSDP2) built from a dict ``{name: fsdp, ...its options}`` (e.g.
    ``save_distributed_checkpoint: true``)."""
    strategy = cfg.trainer.strategy
    if strategy == "fsdp":
        strategy = OmegaConf.create({"name": "fsdp"})
    if not isinstance(strategy, DictConfig):
        return strategy
    options = OmegaConf.to_container(strategy, resolve=True)
    name = options.pop("name", None)
    if name != "fsdp":
        raise ValueError(f"trainer.strategy dict needs name: fsdp, got name={name!r}")
    if cfg.training.snapshot_every is not None:
        raise UserInputError("training.snapshot_every does not work with trainer=fsdp (each rank "
                             "holds a shard): use trainer=ddp, or evaluate the checkpoints")
    if cfg.training.optimizer == "muon":  # Newton-Schulz on a shard is not on the matrix
        raise ValueError("training.optimizer=muon does not work with trainer=fsdp (Muon "
                         "orthogonalises whole matrices, FSDP shards them): use "
                         "training.optimizer=adamw, or trainer=ddp for Muon")
    # FSDP2 through Lightning: BitNetModule.configure_model shards the student (train/scale.py)
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(**options)


def _print_row(label: str, result: dict[str, Any]) -> None:
    ppl = "  ".join(f"{d} ppl {v:.4g}" for d, v in result["domains"].items())
    print(f"{label:<34} {ppl} | {result.get('sample', '')!r}",
          flush=True)
