"""Run-folder reliability (issue 15, items 1-5, 12, 15): one run per folder, a lock, atomic
checkpoints with a verified resume, no writes before validation, per-step metrics, quiet logs,
and the CUDA RNG in checkpoints."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wrinklefree.errors import UserInputError
from wrinklefree.files import remove_orphans
from wrinklefree.train import checkpoint as ckpt
from wrinklefree.train import module as train_module
from wrinklefree.train import run as train_run
from wrinklefree.train.plot import read_metrics

FAST = ["training.warmup_steps=0", "training.keep_last=2", "model.teacher=null",
        "training.reconstruct.epochs=0",  # no teacher: nothing to reconstruct from
        "model.convert.fp_layers=[]",  # the tiny model has 2 layers, the demo keeps 3 in fp
        "objectives=ce"]


def run_dir_of(config) -> Path:
    return Path(config.run_dir)


def train_steps(tiny_config, steps: int, *overrides: str) -> Path:
    return train_run.train(tiny_config(*FAST, f"training.max_steps={steps}",
                                       "training.checkpoint_every=1", *overrides))


def global_step(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


# ---- 1: one run per folder ----------------------------------------------------------------
def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tiny_config):
    run_dir = train_run.train(tiny_config("training=stage1_subln"))
    config_before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(UserInputError) as err:
        train_run.train(tiny_config("training=stage1_subln", "training.seed=7"))
    message = str(err.value)
    assert str(run_dir) in message and "resume=auto" in message and "overwrite=true" in message
    assert (run_dir / "config.yaml").read_bytes() == config_before

    (run_dir / "logs" / "part-00").mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")  # not a run output: overwrite keeps it
    train_run.train(tiny_config("training=stage1_subln", "training.seed=7", "overwrite=true"))
    assert "seed: 7" in (run_dir / "config.yaml").read_text()
    assert not (run_dir / "logs").exists() and (run_dir / "notes.txt").read_text() == "mine"


def test_resume_continues_the_same_checkpoint_files(tiny_config):
    run_dir = train_steps(tiny_config, 2)
    train_steps(tiny_config, 4, "resume=auto")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step-3.ckpt", "step-4.ckpt"], names  # never last-v1.ckpt
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 4
    assert sorted(step for step, _ in read_metrics(run_dir)["train/loss"]) == [0, 1, 2, 3]


# ---- 2: a lock against two live runs ------------------------------------------------------
def write_lock(run_dir: Path, pid: int) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ckpt.LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


def test_a_second_live_run_is_refused(tiny_config):
    config = tiny_config("training=stage1_subln")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = write_lock(run_dir_of(config), holder.pid)
        with pytest.raises(UserInputError, match=rf"in use .*pid {holder.pid}.*run_dir"):
            train_run.train(config)
        assert lock.is_file() and not (run_dir_of(config) / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tiny_config):
    config = tiny_config("training=stage1_subln")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = write_lock(run_dir_of(config), dead.pid)
    with pytest.warns(UserWarning, match=f"stale lock .* {dead.pid}"):
        train_run.train(config)
    assert not lock.exists()
    # released on an exception too (a fresh run that fails once its model loaded)
    with pytest.raises(ValueError, match="telepathy"):
        train_run.train(tiny_config("+objectives.telepathy.weight=1.0", "overwrite=true"))
    assert not lock.exists()


def test_the_lock_refuses_a_holder_in_this_process(tmp_path):
    with ckpt.RunLock(tmp_path):
        with pytest.raises(UserInputError, match="in use"):
            ckpt.RunLock(tmp_path).__enter__()
    assert not (tmp_path / ckpt.LOCK_NAME).exists()


# ---- 3: atomic checkpoints, verified resume -----------------------------------------------
def test_a_failed_save_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "step-2.ckpt"
    ckpt.atomic_torch_save({"step": 1}, target)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        ckpt.AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2.ckpt"]
    assert torch.load(target, weights_only=True) == {"step": 1}


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_a_saved_checkpoint_is_dropped_from_the_page_cache_after_fsync(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(ckpt.os, "posix_fadvise",
                        lambda fd, offset, length, advice: calls.append((offset, length, advice)))
    target = tmp_path / "step-1.ckpt"
    ckpt.atomic_torch_save({"step": 1}, target)
    # the whole file (offset 0, length 0 = to the end), only once its bytes are on disk
    assert calls[:2] == ["fsync", (0, 0, os.POSIX_FADV_DONTNEED)]
    assert torch.load(target, weights_only=True) == {"step": 1}


def test_a_refused_page_cache_hint_still_saves(tmp_path, monkeypatch):
    def refuse(fd, offset, length, advice):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(ckpt.os, "posix_fadvise", refuse, raising=False)
    ckpt.atomic_torch_save({"step": 1}, tmp_path / "step-1.ckpt")
    assert torch.load(tmp_path / "step-1.ckpt", weights_only=True) == {"step": 1}


SAVE_LOOP = textwrap.dedent("""
    import sys, torch
    from wrinklefree.train.checkpoint import AtomicCheckpointIO
    state = {"state_dict": {"w": torch.randn(8_000_000)}, "step": 0}
    io = AtomicCheckpointIO()
    while True:
        io.save_checkpoint(state, sys.argv[1])
        state["step"] += 1
        print(state["step"], flush=True)
""")


def other_filesystem_tmpdir(tmp_path: Path) -> Path:
    """A folder on another filesystem than ``tmp_path`` (tmpfs /dev/shm), as a tmpfs $TMPDIR."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm tmpfs) for $TMPDIR on this machine")
    folder = shm / f"wf-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    return folder


def test_kill_9_during_saves_leaves_an_intact_checkpoint(tmp_path):
    tmpdir = other_filesystem_tmpdir(tmp_path)
    target = tmp_path / "checkpoints" / "last.ckpt"
    try:
        for delay in (0.05, 0.3, 0.7):
            saver = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)],
                                     env={**os.environ, "TMPDIR": str(tmpdir)},
                                     stdout=subprocess.PIPE, text=True)
            saver.stdout.readline()  # one save done: now kill somewhere inside the next ones
            time.sleep(delay)
            os.kill(saver.pid, signal.SIGKILL)
            saver.wait()
            saver.stdout.close()
            assert ckpt.is_intact(target)
            assert torch.load(target, weights_only=True)["state_dict"]["w"].numel() == 8_000_000
            # nothing staged (or orphaned) in $TMPDIR; torch may keep a cache folder there
            assert [p.name for p in tmpdir.iterdir() if p.is_file()] == []
        remove_orphans(target.parent)
        assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    finally:
        shutil.rmtree(tmpdir)


def test_resume_auto_falls_back_from_a_damaged_last_checkpoint(tiny_config):
    run_dir = train_steps(tiny_config, 3)
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()  # last.ckpt links to step-3.ckpt; a half-copied last replaces it
    last.unlink()
    last.write_bytes(data[: len(data) // 3])  # a kill during a copy
    with pytest.warns(UserWarning, match="last.ckpt is damaged"):
        train_steps(tiny_config, 4, "resume=auto")
    assert global_step(last) == 4
    parts = sorted((run_dir / "logs").glob("part-*/metrics.csv"))
    with open(parts[1], newline="") as f:
        resumed = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert len(parts) == 2 and resumed == {3}  # continued from step-3.ckpt, not from scratch


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "step-5.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning, match="damaged"), \
            pytest.raises(UserInputError, match="no intact checkpoint.*overwrite=true"):
        ckpt.latest_intact_checkpoint(tmp_path)
    assert ckpt.latest_intact_checkpoint(tmp_path / "missing") is None


def test_candidates_are_tried_newest_first(tmp_path):
    for name in ("step-2.ckpt", "step-10.ckpt", "last.ckpt", "step-x.ckpt"):
        ckpt.atomic_torch_save({"name": name}, tmp_path / name)
    names = [p.name for p in ckpt.candidate_checkpoints(tmp_path)]
    assert names == ["last.ckpt", "step-10.ckpt", "step-2.ckpt"]


# ---- 4: validate before writing -----------------------------------------------------------
def test_a_failed_launch_does_not_rewrite_the_run_config(tiny_config, tmp_path):
    run_dir = train_run.train(tiny_config("training=stage1_subln"))
    config_before = (run_dir / "config.yaml").read_bytes()
    bad_path = tmp_path / "no-such-corpus.txt"
    with pytest.raises(FileNotFoundError, match="no-such-corpus"):
        train_run.train(tiny_config("training=stage1_subln", "resume=auto",
                                    f"data.sources=[{{name: x, path: '{bad_path}'}}]"))
    with pytest.raises(ValueError, match="telepathy"):  # a resume keeps the run's objectives
        train_run.train(tiny_config("training=stage1_subln", "+objectives.telepathy.weight=1.0",
                                    "resume=auto"))
    assert (run_dir / "config.yaml").read_bytes() == config_before


# ---- 5: metrics survive a kill ------------------------------------------------------------
KILL_AT_STEP_3 = textwrap.dedent("""
    import os, signal, sys
    from omegaconf import OmegaConf
    from wrinklefree.train import run
    from wrinklefree.train.module import BitNetModule

    original = BitNetModule.training_step

    def killed_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch, batch_idx)

    BitNetModule.training_step = killed_at_step_3
    run.train(OmegaConf.load(sys.argv[1]))
""")


def test_metrics_of_every_finished_step_survive_kill_9(tiny_config, tmp_path):
    config = tiny_config(*FAST, "training.max_steps=6", "training.checkpoint_every=100")
    config_file = tmp_path / "launch.yaml"
    OmegaConf.save(config, config_file)
    result = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(config_file)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    steps = [step for step, _ in read_metrics(run_dir_of(config))["train/loss"]]
    assert steps == [0, 1, 2]


def test_a_failed_header_rewrite_keeps_the_logged_rows(tmp_path, monkeypatch):
    from wrinklefree.train.metrics_log import MetricsCSVLogger

    logger = MetricsCSVLogger(tmp_path, name="logs", version="part-00")
    logger.log_metrics({"train/loss": 2.0}, step=0)

    def killed(self, rows):
        raise KeyboardInterrupt  # stands in for a kill between truncation and rewrite

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        logger.log_metrics({"train/loss": 1.0, "tok/s": 5.0}, step=1)  # a new key: new header
    monkeypatch.undo()
    assert read_metrics(tmp_path)["train/loss"] == [(0, 2.0)]
    assert [p.name for p in (tmp_path / "logs" / "part-00").iterdir()] == ["metrics.csv"]


# ---- 12: quiet logs -----------------------------------------------------------------------
def test_runs_print_the_folder_first_and_no_noise(tiny_config, capfd, caplog, recwarn):
    # 3 steps, checkpoints every 2: the last step's checkpoint is not a periodic one (Lightning
    # said "`weights_only` was not set" when it was saved by hand)
    run_dir = train_steps(tiny_config, 3, "logging.progress_bar=true",
                          "training.checkpoint_every=2")
    train_steps(tiny_config, 4, "logging.progress_bar=true", "training.checkpoint_every=2",
                "resume=auto")
    out, err = capfd.readouterr()
    assert out.startswith(f"run folder: {run_dir}\n"), out[:200]
    text = out + err + caplog.text + "\n".join(str(w.message) for w in recwarn)
    for noise in ("weights_only", "💡", "Tip:", "v_num", "Checkpoint directory", "LeafSpec"):
        assert noise not in text, noise


# ---- 15: the CUDA RNG in checkpoints ------------------------------------------------------
def test_cuda_rng_state_is_saved_and_restored_on_cuda(monkeypatch):
    saved = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((state, device)))
    cuda = torch.device("cuda", 0)
    state = train_module.cuda_rng_state(cuda)
    assert state is saved
    train_module.restore_cuda_rng_state(state, cuda)
    assert restored == [(saved, cuda)]


def test_cpu_checkpoints_hold_no_cuda_rng_and_cpu_resume_ignores_one(tiny_config, monkeypatch):
    cpu = torch.device("cpu")
    assert train_module.cuda_rng_state(cpu) is None
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("touched CUDA"))
    train_module.restore_cuda_rng_state(torch.zeros(16, dtype=torch.uint8), cpu)
    train_module.restore_cuda_rng_state(None, torch.device("cuda", 0))
    run_dir = train_steps(tiny_config, 1)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["wrinklefree"]
    assert "cuda_rng" in state and state["cuda_rng"] is None
