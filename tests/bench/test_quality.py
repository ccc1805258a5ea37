"""The recipe study (bench/quality.py) end to end on a tiny model, two steps per recipe."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

QUALITY = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "quality.py"))


def test_every_recipe_composes_into_a_valid_config(tmp_path):
    from wrinklefree.train.compose import compose_train_config

    for name in QUALITY["LABELS"]:
        overrides = QUALITY["recipe_overrides"](name, 40)
        cfg = compose_train_config(overrides)
        if name == "sft":
            assert cfg.model.convert.insert_subln is False
        if name in ("warmup", "kd", "ar", "lrc", "haar", "hadamard"):
            assert cfg.training.quant_lambda.warmup_steps == 20
        if name in ("reconstruct", "samples", "fp_layers", "channel", "demo", "repetition"):
            assert cfg.training.reconstruct.epochs == 6 and cfg.training.lr == 3e-4
    # the ladder starts from plain ASV data without reconstruction, whatever training=demo has
    shared = QUALITY["shared_overrides"]("cpu", 40, tmp_path, "sft")
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("sft", 40)])
    assert cfg.training.reconstruct.epochs == 0 and cfg.data.sources[0].name == "asv"
    assert len(cfg.data.sources) == 1 and cfg.model.convert.fp_layers == []
    assert cfg.model.convert.weight_quant == "absmean" and cfg.model.convert.lrc_rank is None
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("samples", 40)])
    assert [s.name for s in cfg.data.sources] == ["asv", "teacher"]
    assert cfg.model.convert.fp_layers == []
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("fp_layers", 40)])
    assert cfg.model.convert.fp_layers == [0, 1, -1]
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("channel", 40)])
    assert cfg.model.convert.fp_layers == [0, 1, 11, -1] and cfg.model.convert.lrc_rank is None
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("demo", 40)])
    assert cfg.model.convert.lrc_rank == 0.1
    assert cfg.model.convert == compose_train_config([]).model.convert  # = training=demo
    assert "repetition" not in cfg.objectives
    cfg = compose_train_config([*shared, *QUALITY["recipe_overrides"]("repetition", 40)])
    assert cfg.objectives.repetition.weight == 1.0 and "logits_distill" in cfg.objectives
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
             "training.sample_tokens=6"]
    out = tmp_path / "study"
    argv = ["--steps", "2", "--seeds", "2", "--recipes", "sft", "lrc", "--out", str(out),
            "--set", *extra]
    rows = QUALITY["main"](argv)
    assert [r["recipe"] for r in rows] == ["sft", "lrc"]
    for row in rows:
        assert row["seeds"] == 2 and len(row["runs"]) == 2
        for run in row["runs"]:
            for domain in ("asv", "english"):
                assert run["ratio"][domain] == pytest.approx(
                    run["trained_ppl"][domain] / run["teacher_ppl"][domain])
            # chosen on validation windows: other text than the test windows, other numbers
            assert set(run["val_ratio"]) == {"asv", "english"}
            assert run["val_ratio"]["asv"] != pytest.approx(run["ratio"]["asv"], rel=1e-9)
            assert 0 <= run["rep4"] <= 1 and 0 < run["distinct2"] <= 1
            assert len(run["ce_curve"]) == 2
        mean, sd = row["ratio_english"]
        ratios = [run["ratio"]["english"] for run in row["runs"]]
        assert mean == pytest.approx(sum(ratios) / 2)
        assert sd == pytest.approx(abs(ratios[0] - ratios[1]) / 2 ** 0.5)
        assert not (out / row["recipe"] / "seed0" / "final").exists()  # models dropped
    # the seed changes the data order: the two seeds did not train the same model
    sft = rows[0]["runs"]
    assert sft[0]["trained_ppl"]["asv"] != pytest.approx(sft[1]["trained_ppl"]["asv"], rel=1e-9)
    assert sft[0]["teacher_ppl"] == rows[1]["runs"][1]["teacher_ppl"]  # same windows
    summary = json.loads((out / "quality.json").read_text())
    assert summary["tokens"] == 2 * 2 * 32 and summary["seeds"] == 2
    assert (out / "quality.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "+ LRC 10%" in table and "english / teacher (val)" in table and "±" in table
    # a second call reuses the finished reports instead of training again
    (out / "sft" / "seed0" / "logs").rename(out / "sft" / "seed0" / "logs-moved")
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        QUALITY["main"](argv)


def test_aggregate_and_cells_by_hand():
    runs = [{"recipe": "kd", "label": "+ logits KD", "overrides": [], "ce_curve": [],
             "teacher_ppl": {"asv": 10.0, "english": 50.0},
             "converted_ppl": {"asv": 1e7, "english": 2e7},
             "trained_ppl": {"asv": t, "english": 5 * t},
             "ratio": {"asv": t / 10, "english": t / 10},
             "val_ratio": {"asv": t / 20, "english": t / 20},
             "rep4": 0.0, "distinct2": 1.0, "final_train_ce": 3.0, "tokens_per_s": None,
             "wall_s": 1.0, "bits_stored": 5.61, "bits_exported": 4.64, "gguf_mb": 93.8}
            for t in (20.0, 40.0)]
    row = QUALITY["aggregate"](runs)
    # ratios 2 and 4: mean 3, sample sd sqrt(((2-3)^2 + (4-3)^2) / 1) = sqrt(2)
    assert row["ratio_asv"] == pytest.approx((3.0, 2 ** 0.5))
    assert row["val_ratio_english"] == pytest.approx((1.5, 2 ** 0.5 / 2))
    assert row["tokens_per_s"] == (None, 0.0)
    assert row["bits_stored"] == (5.61, 0.0) and row["gguf_mb"] == (93.8, 0.0)
    assert QUALITY["_cell"](row["ratio_asv"], ".2f") == "3.00 ± 1.41"
    assert QUALITY["_cell"]((3.0, 0.0), ".2f") == "3.00"
    assert QUALITY["_cell"]((None, 0.0), ".2f") == "-"
