"""The recipe study (bench/quality.py) end to end on a tiny model, two steps per recipe."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

QUALITY = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "quality.py"))


def test_every_recipe_composes_into_a_valid_config():
    from wrinklefree.cli import compose_train_config

    for name in QUALITY["LABELS"]:
        overrides = QUALITY["recipe_overrides"](name, 40)
        cfg = compose_train_config(overrides)
        if name == "sft":
            assert cfg.model.convert.insert_subln is False
        if name != "sft" and name != "subln":
            assert cfg.training.quant_lambda.warmup_steps == 20
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        QUALITY["recipe_overrides"]("nope", 40)


def test_a_bad_override_fails_before_any_training(tmp_path):
    with pytest.raises(ValueError, match="training.lrr"):
        QUALITY["main"](["--recipes", "sft", "--out", str(tmp_path), "--set", "training.lrr=1"])
    assert not (tmp_path / "sft").exists()


def test_study_runs_reports_and_resumes(tiny_source, text_files, tmp_path, capsys):
    extra = [f"model.source={tiny_source}",
             f"data.sources=[{{name: words, path: '{text_files['words']}'}}]",
             f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=32",
             "model.calibration_batches=1", "training.batch_size=2", "training.val_windows=2",
             "training.sample_tokens=4"]
    out = tmp_path / "study"
    argv = ["--steps", "2", "--recipes", "sft", "lrc", "--out", str(out), "--set", *extra]
    rows = QUALITY["main"](argv)
    assert [r["recipe"] for r in rows] == ["sft", "lrc"]
    for row in rows:
        assert row["ratio_to_teacher"] == pytest.approx(row["trained_ppl"] / row["teacher_ppl"])
        assert len(row["ce_curve"]) == 2
        assert not (out / row["recipe"] / "final").exists()  # models dropped unless asked
    assert rows[0]["teacher_ppl"] == pytest.approx(rows[1]["teacher_ppl"])  # same windows
    summary = json.loads((out / "quality.json").read_text())
    assert summary["tokens"] == 2 * 2 * 32
    assert (out / "quality.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "+ LRC 10%" in table and "/ teacher" in table
    # a second call reuses the finished reports instead of training again
    (out / "sft" / "logs").rename(out / "sft" / "logs-moved")
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        QUALITY["main"](argv)
