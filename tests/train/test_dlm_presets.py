"""The diffusion presets end to end on a tiny model: dlm_demo (curriculum CE+KD -> DLM ramp +
TCS) followed by `wf bench dlm` on the trained student, dlm_self continuing it on its own
trajectories (certainty forcing) with the self-speculation row, dlm_distill and
lrc_dlm_influence."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from wrinklefree.data.identity import tokenizer_fingerprint
from wrinklefree.generate import generate_ar
from wrinklefree.models import load_tokenizer
from wrinklefree.train import run as train_run
from wrinklefree.train.plot import read_metrics

BENCH = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "dlm.py"))
FAST = ["training.checkpoint_every=100", "training.warmup_steps=0", "objectives.tcs.top_k=8"]


def test_dlm_demo_trains_through_its_curriculum_and_benches(tiny_config, tiny_source, tmp_path,
                                                            capsys):
    run_dir = train_run.train(tiny_config("training=dlm_demo", "training.max_steps=3",
                                          "objectives.dlm.block_size=8", *FAST))
    metrics = read_metrics(run_dir)
    dlm_weight = dict(metrics["train/weight/dlm"])
    assert dlm_weight[0] == 0.0 and 0.0 < dlm_weight[1] < 1.0 and dlm_weight[2] == 1.0  # ramp
    assert all(v > 0 for v in dict(metrics["train/dlm/loss"]).values())
    assert json.loads((run_dir / "final" / "config.json").read_text())["dlm_block_size"] == 8

    out = tmp_path / "bench"
    result = BENCH["main"](["--student", str(run_dir), "--teacher", str(tiny_source),
                            "--thresholds", "0.5", "2", "--prompts", "2", "--prompt-len", "8",
                            "--new-tokens", "10", "--elbo-windows", "1", "--elbo-samples", "2",
                            "--seq-len", "32", "--out", str(out)])
    rows = {r["name"]: r for r in result["rows"]}
    assert result["block_size"] == 8  # recorded on the student
    assert rows["AR"]["tokens_per_forward"] == 1.0 and rows["AR"]["speedup"] == 1.0
    assert rows["block diffusion τ=2"]["tokens_per_forward"] == pytest.approx(1.0)
    assert rows["block diffusion τ=0.5"]["tokens_per_forward"] >= 1.0
    for row in rows.values():
        assert row["tokens"] == 20 and row["teacher_ppl"] > 1.0 and row["decode_tok_s"] > 0
    assert result["student_masked_elbo_nats"] > 0
    saved = json.loads((out / "dlm.json").read_text())
    assert [r["name"] for r in saved["rows"]] == list(rows)
    assert (out / "dlm.png").stat().st_size > 0
    confidence = result["confidence"]  # 4 blocks of 8 in the 32-token window
    assert [r["offset"] for r in confidence["offsets"]] == list(range(1, 8))
    assert confidence["blocks"] == 4 and confidence["first_step"][2.0] == 1.0  # τ > 1: one
    assert 1.0 <= confidence["first_step"][0.5] <= 7.0
    printed = capsys.readouterr().out
    assert "teacher ppl" in printed and "first denoising step" in printed


def test_dlm_distill_runs_end_to_end(tiny_config, tiny_source, tmp_path):
    run_dir = train_run.train(tiny_config(
        "training=dlm_distill", "training.max_steps=2", "objectives.dlm.block_size=8",
        "objectives.block_attention_distill.block_size=8",
        *FAST))
    losses = dict(read_metrics(run_dir)["train/dlm/loss"])
    assert list(losses) == [1] and losses[1] > 0  # CE warm-up at step 0, DLM at step 1
    # the student's tokenizer has <|mask|>; the data was tokenised (and cached) without it, under
    # the same key an AR run of this source uses
    student_vocab = len(load_tokenizer(str(run_dir / "final")))
    source_print = tokenizer_fingerprint(load_tokenizer(str(tiny_source)))
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert metas and all(m["tokenizer"] == source_print for m in metas)
    assert source_print["size"] == student_vocab - 1


def test_lrc_dlm_influence_runs_end_to_end(tiny_config, text_files):
    run_dir = train_run.train(tiny_config(
        "training=lrc_dlm_influence", "training.max_steps=2", "objectives.dlm.block_size=8",
        f"data.sources=[{{name: words, path: '{text_files['words']}', weight: 0.5}}, "
        f"{{name: digits, path: '{text_files['digits']}', weight: 0.5}}]",
        "data.remix.every_steps=1", "data.remix.windows_per_source=1",
        "data.remix.probe_windows=1", *FAST))
    metrics = read_metrics(run_dir)
    assert max(v for _, v in metrics["train/weight/dlm"]) > 0
    assert any(key.startswith("remix/") for key in metrics)


def test_dlm_self_trains_on_the_students_trajectories_and_benches(tiny_config, tiny_source,
                                                                  text_files, tmp_path):
    """dlm_self from a dlm_demo student: its greedy trajectories are sampled and cached, the
    certainty term ramps in beside KD, and the bench's self-speculation row equals AR's text."""
    start = train_run.train(tiny_config("training=dlm_demo", "training.max_steps=2",
                                        "objectives.dlm.block_size=8", *FAST,
                                        f"run_dir={tmp_path / 'start'}"))
    student = start / "final"
    trajectories = (
        f"{{name: trajectories, kind: teacher_samples, weight: 0.5, sampling: {{model: "
        f"'{student}', num_docs: 4, max_new_tokens: 8, temperature: 0.0, top_p: 1.0, "
        f"first_token: text, prompts: '{text_files['words']}', prompt_tokens: 6, "
        f"batch_size: 4}}}}")
    run_dir = train_run.train(tiny_config(
        "training=dlm_self", f"model.source={student}", f"model.teacher={tiny_source}",
        "training.max_steps=3", "training.checkpoint_every=100", "training.warmup_steps=0",
        f"data.sources=[{{name: words, path: '{text_files['words']}', weight: 0.5}}, "
        f"{trajectories}]"))
    metrics = read_metrics(run_dir)
    weight = dict(metrics["train/weight/certainty"])
    assert weight[0] == 0.0 and weight[2] == 1.0  # KD alone first, then certainty forcing
    assert dict(metrics["train/certainty/loss"])[2] > 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    sampled = [m["source"]["teacher_samples"] for m in metas if "teacher_samples" in m["source"]]
    assert sampled and sampled[0]["settings"]["first_token"] == "text" and "prompts" in sampled[0]

    result = BENCH["main"](["--student", str(run_dir), "--teacher", str(tiny_source),
                            "--thresholds", "0.5", "--prompts", "2", "--prompt-len", "8",
                            "--new-tokens", "12", "--elbo-windows", "1", "--elbo-samples", "1",
                            "--seq-len", "32", "--out", str(tmp_path / "bench")])
    rows = {r["name"]: r for r in result["rows"]}
    assert result["block_size"] == 8  # the certainty objective's, recorded on the student
    assert list(rows) == ["AR", "self-speculation", "block diffusion τ=0.5"]
    speculative = rows["self-speculation"]
    assert speculative["tokens"] == 24 and speculative["tokens_per_forward"] >= 1.0
    assert result["lossless"] == {"dtype": "float64", "prompts": 2, "new_tokens": 12,
                                  "identical": True}  # else the bench raises
    assert all(0 <= n <= 12 for n in speculative["agrees_with_ar"])  # float32: reported
    drafts = speculative.get("drafts", [])  # a forward commits its certain token + accepted
    unexplained = (speculative["tokens"] - (speculative["forwards"] - 2)
                   - sum(d["accepted"] for d in drafts))
    assert 0 <= unexplained <= 2  # a row's last token may come without a forward
    assert all(0 <= d["accepted"] <= d["checked"] for d in drafts)
    assert all(later["checked"] <= d["accepted"]
               for d, later in zip(drafts, drafts[1:], strict=False))


def test_the_lossless_check_fails_on_a_different_token_and_restores_the_dtype(monkeypatch):
    from tiny_models import tiny_model

    model, prompts = tiny_model(vocab_size=128), torch.tensor([[5, 9, 17, 3], [8, 2, 2, 40]])
    check = BENCH["lossless_check"]
    assert check(model, prompts, 127, 4, 6)["identical"]
    assert next(model.parameters()).dtype == torch.float32

    def off_by_one(model, prompt, **options):
        yield [t + 1 for c in generate_ar(model, prompt, max_new_tokens=6) for t in c]

    monkeypatch.setitem(check.__wrapped__.__globals__, "generate_speculative", off_by_one)
    with pytest.raises(RuntimeError, match="differs from greedy AR in float64 on prompt 0 at "
                                           "new token 0"):
        check(model, prompts, 127, 4, 6)
    assert next(model.parameters()).dtype == torch.float32
