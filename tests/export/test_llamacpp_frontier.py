"""`wf bench frontier` end to end in llama.cpp on a tiny exported model: the teacher (an F16
export) through llama.cpp's quantizer and a ternary student, scored on the same windows; checks
the JSON fields and that the PNG is written."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from llamacpp_probe import require_llamacpp
from tiny_bitnet import save_tiny

from wrinklefree.cli import main as wf

require_llamacpp()  # skips, with the reason, where it is missing or crashes
pytestmark = pytest.mark.llamacpp
FRONTIER = Path(__file__).parents[2] / "bench" / "frontier.py"


def test_frontier_of_a_tiny_model(tmp_path):
    folder = save_tiny(tmp_path / "model")
    teacher = tmp_path / "teacher.gguf"
    wf(["export", str(folder), str(teacher), "--type", "f16", "--embed-type", "f16"])
    students = tmp_path / "students"
    students.mkdir()
    wf(["export", str(folder), str(students / "ternary.gguf"), "--embed-type", "q8_0"])
    (students / "ternary_copy.gguf").write_bytes((students / "ternary.gguf").read_bytes())
    out = tmp_path / "frontier"
    summary = runpy.run_path(str(FRONTIER))["main"]([
        str(students), "--teacher", str(teacher), "--types", "q8_0", "--windows", "2",
        "--seq-len", "32", "--loop-prompts", "2", "--loop-tokens", "4", "--decode-tokens", "4",
        "--out", str(out)])
    saved = json.loads((out / "frontier.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(summary["rows"]))
    assert saved["windows"] == {"asv": [2, 32], "english": [2, 32]}
    rows = {r["label"]: r for r in saved["rows"]}
    assert list(rows) == ["teacher as shipped", "teacher -> q8_0", "students/ternary",
                          "students/ternary_copy"]
    assert [r["kind"] for r in rows.values()] == ["teacher", "teacher", "student", "student"]
    # a file already scored (by its bytes) is not scored again: the same numbers, no time
    copy = rows.pop("students/ternary_copy")
    assert copy["same_file_as"] == "students/ternary" and copy["score_s"] == 0.0
    assert copy["perplexity"] == rows["students/ternary"]["perplexity"]
    assert rows["students/ternary"]["same_file_as"] is None
    for r in rows.values():
        assert r["file_mb"] > 0 and set(r["decode_tok_s"]) == {"1", "2"}
        assert all(v > 0 for v in r["decode_tok_s"].values())
        for key in ("perplexity", "ratio", "rep4", "pareto"):
            assert set(r[key]) == {"asv", "english"}, key
        assert all(0 <= v <= 1 for v in r["rep4"].values())
    assert rows["teacher as shipped"]["ratio"] == {"asv": 1.0, "english": 1.0}
    assert rows["teacher as shipped"]["bits_per_linear_weight"] == pytest.approx(16, abs=0.1)
    assert rows["teacher -> q8_0"]["bits_per_linear_weight"] == pytest.approx(8.5, abs=0.1)
    # TQ2_0 (2.0625 bits) plus one f32 scale per tensor
    assert 2.0625 <= rows["students/ternary"]["bits_per_linear_weight"] < 2.2
    # the smallest file is always on the frontier of both domains
    smallest = min(rows.values(), key=lambda r: r["file_mb"])
    assert smallest["pareto"] == {"asv": True, "english": True}
    png = out / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_of_a_run_scores_its_snapshots_with_their_tokens(tmp_path):
    """--curve RUN: each snapshot and final/ is exported once, scored as a student row with the
    tokens it trained on (step x batch x grad_accum x seq_len x world), and fitted."""
    folder = save_tiny(tmp_path / "model")
    teacher = tmp_path / "teacher.gguf"
    wf(["export", str(folder), str(teacher), "--type", "f16", "--embed-type", "f16"])
    run = tmp_path / "run"
    save_tiny(run / "snapshots" / "step-2", seed=1)
    save_tiny(run / "final", seed=2)
    (run / "config.yaml").write_text("training: {batch_size: 4, grad_accum: 2, gguf_round_at: 0.5}"
                                     "\ndata: {seq_len: 32}\n")
    (run / "report.json").write_text(json.dumps({"total_steps": 5, "world_size": 1}))
    out = tmp_path / "frontier"
    args = ["--curve", str(run), "--teacher", str(teacher), "--types", "--windows", "2",
            "--seq-len", "32", "--loop-prompts", "2", "--loop-tokens", "4", "--decode-tokens",
            "4", "--out", str(out)]
    summary = runpy.run_path(str(FRONTIER))["main"](args)
    rows = {r["label"]: r for r in summary["rows"]}
    # step 2 is before the rounding step ceil(0.5 * 5) = 3
    assert list(rows) == ["teacher as shipped", "run step 2 (rounded at export)", "run step 5"]
    assert rows["run step 2 (rounded at export)"]["tokens"] == 2 * 4 * 2 * 32
    assert rows["run step 5"]["tokens"] == 5 * 4 * 2 * 32
    assert rows["teacher as shipped"]["tokens"] is None
    assert sorted(p.name for p in (out / "curve").glob("*.gguf")) == [
        "run-step-2.gguf", "run-step-5.gguf"]
    assert set(summary["curve"]) == {"asv", "english"}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "curve" / "run-step-5.gguf").stat().st_mtime_ns
    runpy.run_path(str(FRONTIER))["main"](args)  # a second run exports nothing again
    assert (out / "curve" / "run-step-5.gguf").stat().st_mtime_ns == before
