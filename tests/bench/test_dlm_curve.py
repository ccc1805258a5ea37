"""bench/dlm.py --curve: the points of a run's benches against the tokens trained on."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import yaml

DLM = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "dlm.py"))


def _bench(folder: Path, tok_per_fwd: float, ar_ppl: float) -> None:
    folder.mkdir(parents=True)
    rows = [{"name": "AR", "tokens_per_forward": 1.0, "ppl_ratio": 1.0, "speedup": 1.0},
            {"name": "self-speculation", "tokens_per_forward": tok_per_fwd, "ppl_ratio": 1.0,
             "speedup": tok_per_fwd / 1.5}]
    (folder / "dlm.json").write_text(json.dumps({"rows": rows, "student_ar_ppl": ar_ppl}))


def test_curve_orders_benches_by_the_tokens_trained_on(tmp_path, capsys):
    start, run = tmp_path / "start", tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"source": str(start / "final")},
        "training": {"batch_size": 4, "grad_accum": 2, "max_steps": 300},
        "data": {"seq_len": 128}}))
    _bench(start / "bench-dlm", 1.0, 40.0)
    _bench(run / "snapshots" / "step-200" / "bench-dlm", 1.8, 41.0)
    _bench(run / "snapshots" / "step-100" / "bench-dlm", 1.4, 40.5)
    _bench(run / "bench-dlm", 2.1, 41.5)
    points = DLM["curve"](run)
    # 4 x 2 x 128 = 1024 tokens per step; the start counts 0
    assert [(p["step"], p["tokens"]) for p in points] == [
        (0, 0), (100, 102_400), (200, 204_800), (300, 307_200)]
    assert [p["rows"]["self-speculation"]["tokens_per_forward"] for p in points] == [
        1.0, 1.4, 1.8, 2.1]
    DLM["print_curve"](run)
    out = capsys.readouterr().out
    assert "307200" in out and "2.10 tok/fwd" in out
    assert json.loads((run / "dlm-curve.json").read_text()) == points
