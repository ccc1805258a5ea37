"""Resume and run-folder faults (issue 31, items 1, 3, 4, 5, 7, 14): a finished run is left as
it is, a changed config is refused, a full disk at the end keeps final/, a failed launch leaves
no folder, a malicious checkpoint is refused before anything is written, and every refusal is
one line of `wf train`."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wrinklefree.cli import main, one_line_warnings
from wrinklefree.convert import load_bitnet
from wrinklefree.errors import OneLineWarning, UserInputError
from wrinklefree.train import checkpoint as ckpt
from wrinklefree.train import run as train_run
from wrinklefree.train.plot import read_metrics
from wrinklefree.train.resume import config_changes, flatten

FAST = ["training.warmup_steps=0", "objectives=ce", "model.teacher=null",
        "training.checkpoint_every=1", "training.keep_last=1"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` -> its bytes (None for a folder): what a no-op must keep."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


def wf_train_error(capsys, overrides: list[str]) -> list[str]:
    """The stderr lines of a refused `wf train` (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


# ---- 1 and 3: a finished run, a longer run, a changed config --------------------------------
def test_resume_of_a_finished_run_changes_nothing_and_a_changed_config_is_refused(
        tiny_config, capfd):
    # the teacher's and the converted student's rows are measured before training
    first = ["training.warmup_steps=0", "objectives=ce", "training.checkpoint_every=1",
             "training.keep_last=1", "training.eval_before=true", "training.max_steps=2"]
    run_dir = train_run.train(tiny_config(*first))
    before = snapshot(run_dir)
    assert {"teacher", "converted"} <= set(json.loads(before["report.json"]))
    capfd.readouterr()

    train_run.train(tiny_config(*first, "resume=auto"))  # finished: nothing to do
    assert "holds a finished run (2 steps" in capfd.readouterr().out
    assert snapshot(run_dir) == before

    with pytest.raises(UserInputError) as refused:  # another run under the same name
        train_run.train(tiny_config(*first, "resume=auto", "data.seq_len=64",
                                    "training.batch_size=3", "training.lr=0.001"))
    message = str(refused.value)
    for change in ("data.seq_len (32 -> 64)", "training.batch_size (2 -> 3)",
                   "training.lr (0.0003 -> 0.001)", "run_dir=", "overwrite=true"):
        assert change in message, change
    assert snapshot(run_dir) == before

    # a longer run is the same run: it trains on, records the new length, keeps every row
    train_run.train(tiny_config(*first[:-1], "training.max_steps=3", "resume=auto"))
    assert "resuming with training.max_steps=3 (was 2" in capfd.readouterr().out
    assert OmegaConf.load(run_dir / "config.yaml").training.max_steps == 3
    report = json.loads((run_dir / "report.json").read_text())
    assert {"teacher", "converted", "trained"} <= set(report) and report["total_steps"] == 3
    assert report["ratio_to_teacher"] is not None
    assert sorted(step for step, _ in read_metrics(run_dir)["train/loss"]) == [0, 1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.ckpt", "step-3.ckpt"]


def test_config_changes_compare_what_the_run_trains():
    saved = {"run_dir": "a", "resume": None, "training": {"lr": 1e-3, "betas": [0.9, 0.95]},
             "logging": {"progress_bar": True}, "data": {"sources": [{"path": "x"}]}}
    new = {"run_dir": "b", "resume": "auto", "training": {"lr": 1e-3, "betas": [0.9, 0.99],
                                                         "new_key": 1},
           "logging": {"progress_bar": False}, "data": {"sources": [{"path": "y"}]},
           "objectives": {"ce": {"weight": 1.0}}}
    assert flatten(saved["data"]) == {"sources.0.path": "x"}
    # launch-only keys (run_dir, resume, logging) are not compared, nor a typed key the saved
    # config lacks (a newer schema's); an objective one side lacks is a change
    assert config_changes(saved, new) == {"training.betas.1": (0.95, 0.99),
                                          "data.sources.0.path": ("x", "y"),
                                          "objectives.ce.weight": ("(absent)", 1.0)}


# ---- 4: a full disk at the end, a failed launch ---------------------------------------------
def test_a_full_disk_at_the_end_keeps_final_and_the_earlier_checkpoint(tiny_config, monkeypatch):
    save = ckpt.AtomicCheckpointIO.save_checkpoint
    order = []

    def disk_full_at_step_3(self, checkpoint, path, storage_options=None):
        if Path(path).name == "step-3.ckpt":  # the last step's checkpoint does not fit
            order.append((run_dir / "final" / "model.safetensors").is_file())
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, checkpoint, path, storage_options)

    config = tiny_config(*FAST, "training.max_steps=3")
    run_dir = Path(config.run_dir)
    monkeypatch.setattr(ckpt.AtomicCheckpointIO, "save_checkpoint", disk_full_at_step_3)
    with pytest.warns(OneLineWarning, match="could not write the last checkpoint .*no space left "
                      "on device.*final/ is saved"):
        train_run.train(config)
    assert order == [True]  # final/ was written before the last checkpoint
    load_bitnet(run_dir / "final")
    assert json.loads((run_dir / "report.json").read_text())["total_steps"] == 3
    # keep_last=1 removes step-2 only once step-3 is whole: the run can still be extended
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.ckpt", "step-2.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
        "global_step"] == 2


def test_a_failed_launch_leaves_no_empty_run_folder(tiny_config, tmp_path):
    run_dir = tmp_path / "runs" / "new"
    with pytest.raises(ValueError, match="telepathy"):  # fails after the model loaded
        train_run.train(tiny_config(*FAST, "+objectives.telepathy.weight=1.0",
                                    f"run_dir={run_dir}"))
    assert not (tmp_path / "runs").exists()


# ---- 5, 7, 14: one line per refusal, nothing written before validation ----------------------
def test_run_folder_refusals_are_one_line(tiny_overrides, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text("{}")
    lines = wf_train_error(capsys, tiny_overrides(*FAST))
    assert lines == [f"wf train: error: run_dir {run_dir} already holds a run (report.json): "
                     "continue it with resume=auto, start a new one with a different "
                     "run_dir=..., or replace it with overwrite=true"]

    lock = run_dir / ckpt.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    lines = wf_train_error(capsys, tiny_overrides(*FAST))
    assert len(lines) == 1 and lines[0].startswith(f"wf train: error: run_dir {run_dir} is in use")
    lock.unlink()

    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(OneLineWarning, match="last.ckpt is damaged"):
        lines = wf_train_error(capsys, tiny_overrides(*FAST, "resume=auto"))
    assert len(lines) == 1 and lines[0].startswith("wf train: error: no intact checkpoint in ")


def test_a_malicious_checkpoint_under_resume_auto_is_refused_before_any_write(
        tiny_overrides, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": Payload(), "loops": {}}, run_dir / "checkpoints" / "last.ckpt")
    before = snapshot(run_dir)
    lines = wf_train_error(capsys, tiny_overrides(*FAST, "resume=auto",
                                                  "logging.tensorboard=true"))
    assert lines == [f"wf train: error: resume=auto: {run_dir}/checkpoints/last.ckpt is not a "
                     "wrinklefree/Lightning checkpoint (it holds Python objects beyond tensors "
                     "and plain data; not unpickled); delete it to continue from an earlier "
                     "checkpoint, or start over with overwrite=true"]
    assert "payload ran" not in capsys.readouterr().out
    assert snapshot(run_dir) == before  # no config.yaml, logs/ or tensorboard/


def test_wf_prints_its_own_warnings_as_one_line():
    line = one_line_warnings("train")("taking over the stale lock x", OneLineWarning, "f.py", 9)
    assert line == "wf train: warning: taking over the stale lock x\n"
    other = one_line_warnings("train")("deprecated", DeprecationWarning, "f.py", 9)
    assert "f.py:9: DeprecationWarning: deprecated" in other


def test_wf_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wf {version('wrinklefree')}"
