import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wrinklefree.convert import load_bitnet
from wrinklefree.train import run as train_run
from wrinklefree.train.module import BitNetModule
from wrinklefree.train.plot import read_metrics


def losses_by_step(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return dict(read_metrics(run_dir)[key])


DLM_CURRICULUM = [
    "training=dlm_distill",
    "model.attn_implementation=eager",
    "training.max_steps=6",
    "training.checkpoint_every=1",
    "training.keep_last=1",
    "training.warmup_steps=0",
    "training.quant_lambda.warmup_steps=3",
    "objectives.block_attention_distill.block_size=8",
    "objectives.tcs.top_k=8",
]


def test_resume_after_crash_reproduces_the_loss_curve(tiny_config, tmp_path, monkeypatch):
    straight = train_run.train(tiny_config(*DLM_CURRICULUM, f"run_dir={tmp_path / 'straight'}"))
    expected = losses_by_step(straight)
    assert len(expected) == 6

    original = BitNetModule.training_step

    def crash_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    crashed_dir = tmp_path / "crashed"
    monkeypatch.setattr(BitNetModule, "training_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run.train(tiny_config(*DLM_CURRICULUM, f"run_dir={crashed_dir}"))
    monkeypatch.setattr(BitNetModule, "training_step", original)
    last = crashed_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and last.is_symlink()  # a link to step-3.ckpt, not a second copy
    assert last.resolve() == (crashed_dir / "checkpoints" / "step-3.ckpt").resolve()
    train_run.train(tiny_config(*DLM_CURRICULUM, f"run_dir={crashed_dir}", "resume=auto"))
    resumed = losses_by_step(crashed_dir)
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    # the curriculum switched objectives at the same step in both runs
    assert losses_by_step(crashed_dir, "train/weight/dlm") == losses_by_step(
        straight, "train/weight/dlm")


def test_stage1_convert_only_writes_a_loadable_model(tiny_config):
    run_dir = train_run.train(tiny_config("training=stage1_subln",
                                          "training.sample_repetition_penalty=1.3"))
    model = load_bitnet(run_dir / "final")
    assert model.config.bitnet["insert_subln"] is True
    assert model.generation_config.repetition_penalty == 1.3  # the samples' decoding travels
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.json").is_file()


def test_stage3_distill_trains_and_exports_to_gguf_not_hf(tiny_config, tmp_path):
    """The exportable recipe: reconstruction, per-channel scales, BitDistill's loss; GGUF holds
    a per-channel scale, transformers' BitNet refuses it naming the fix."""
    from wrinklefree.export import export_model

    run_dir = train_run.train(tiny_config("training=stage3_distill", "training.max_steps=2",
                                          "training.warmup_steps=0",
                                          "training.reconstruct={epochs: 1, batches: 1}"))
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["reconstruction_errors"]) == 2 and report["trained"]["perplexity"] > 0
    assert load_bitnet(run_dir / "final").config.bitnet["weight_quant"] == "absmean_channel"
    result = export_model(run_dir, tmp_path / "m.gguf", "gguf")
    assert result["tensors"]["blk.0.attn_q.weight"][1] > 0
    assert result["storage"]["gguf"]["model_file_bytes"] == (tmp_path / "m.gguf").stat().st_size
    with pytest.raises(ValueError, match="model.convert.weight_quant=absmean"):
        export_model(run_dir, tmp_path / "hf", "hf")


def test_model_gguf_rounds_and_freezes_what_llamacpp_quantizes(tiny_config, tmp_path,
                                                              monkeypatch):
    """model.gguf: from training.gguf_round_at on, the embeddings, full-precision layers and
    LRC factors sit on the GGUF grid and stay there while the ternary weights train; final/
    records the types, and `wf export` writes them without flags."""
    from wrinklefree.export import export_model
    from wrinklefree.export.gguf import recorded_gguf_types, round_to_gguf

    at_rounding = {}
    rounding = BitNetModule._round_to_gguf

    def spy(self):
        rounding(self)
        at_rounding.update({k: v.detach().clone() for k, v in self.student.state_dict().items()})
        at_rounding["step"] = self.global_step

    monkeypatch.setattr(BitNetModule, "_round_to_gguf", spy)
    run_dir = train_run.train(tiny_config(
        "training.max_steps=4", "training.warmup_steps=0", "training.gguf_round_at=0.5",
        "model.convert.fp_layers=[0]", "model.convert.fp_layers_subln=true",
        "model.convert.lrc_rank=4",
        "model.gguf.embed_type=q4_0", "model.gguf.fp_type=q4_0", "model.gguf.lora_type=q4_0"))
    assert at_rounding["step"] == 2
    model = load_bitnet(run_dir / "final")
    types = recorded_gguf_types(model)
    assert (types.embed_type, types.fp_type, types.lora_type) == ("q4_0",) * 3
    final = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = round_to_gguf(model, types)  # on the grid already: nothing moves
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    names = {n for n, _ in model.named_parameters() for p in frozen.values()
             if p is dict(model.named_parameters())[n]}
    assert "model.embed_tokens.weight" in names and "model.layers.0.mlp.up_proj.weight" in names
    assert "model.layers.1.mlp.up_proj.lrc_U" in names
    for name in names:  # unchanged since they were rounded
        assert torch.equal(final[name], at_rounding[name]), name
    ternary = "model.layers.1.mlp.up_proj.weight"  # trained on after the rounding
    assert not torch.equal(final[ternary], at_rounding[ternary])
    result = export_model(run_dir, tmp_path / "m.gguf", "gguf")  # no flags: the recorded types
    assert result["tensors"]["token_embd.weight"][0] == "Q4_0"
    assert result["tensors"]["blk.0.ffn_up.weight"][0] == "Q4_0"  # the fp layer
    assert result["tensors"]["blk.1.ffn_up.weight.lora_a"][0] == "Q4_0"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["storage"]["gguf"]["model_file_bytes"] == (tmp_path / "m.gguf").stat().st_size


def test_model_gguf_type_is_checked_before_anything_runs(tiny_config):
    from wrinklefree.errors import UserInputError

    with pytest.raises(UserInputError, match=r"model.gguf: --fp-type 'q3_0'.*choose one of"):
        train_run.train(tiny_config("model.gguf.fp_type=q3_0"))


def test_snapshots_save_loadable_models_along_the_run(tiny_config):
    """training.snapshot_every: a model folder every N steps (the last step is final/), each
    the student as it was then, recording the types its run ships (exported at them by default,
    also when it was taken before the rounding step)."""
    from wrinklefree.eval.perplexity import perplexity
    from wrinklefree.export.gguf import recorded_gguf_types

    run_dir = train_run.train(tiny_config("training.max_steps=4", "training.snapshot_every=2",
                                          "training.warmup_steps=0", "training.gguf_round_at=1.0",
                                          "model.gguf.embed_type=q5_0"))
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["step-2"]
    snapshot, final = load_bitnet(run_dir / "snapshots" / "step-2"), load_bitnet(run_dir / "final")
    windows = torch.randint(0, 100, (2, 16))
    assert perplexity(snapshot, windows) != perplexity(final, windows)  # two steps apart
    assert recorded_gguf_types(snapshot).embed_type == "q5_0"
    assert recorded_gguf_types(final) == recorded_gguf_types(snapshot)
    assert (run_dir / "snapshots" / "step-2" / "tokenizer_config.json").is_file()


def test_curriculum_phase_switches_the_data_mixture(tiny_config, text_files):
    run_dir = train_run.train(tiny_config(
        f"data.sources=[{{name: words, path: '{text_files['words']}', weight: 1.0}}, "
        f"{{name: digits, path: '{text_files['digits']}', weight: 0.0}}]",
        "training.max_steps=4",
        "training.checkpoint_every=10",
        "+curriculum.phases=[{name: a, end_ratio: 0.5, objective_weights: {continue_pretrain: 1.0},"
        " data_config: {words: 1.0}}, {name: b, end_ratio: 1.0, objective_weights: "
        "{continue_pretrain: 1.0}, data_config: {digits: 1.0}}]",
    ))
    digits = losses_by_step(run_dir, "data/digits")
    assert digits[0] == 0.0 and digits[3] == 1.0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["trained"]["perplexity"] > 0
    assert (run_dir / "loss.png").is_file()
    # where the time went, by phase (the report's time line)
    assert {"models and data", "training", "trained eval"} <= set(report["seconds"])
    assert all(t >= 0 for t in report["seconds"].values())


def test_repetition_penalty_trains_beside_kd_and_is_logged(tiny_config):
    run_dir = train_run.train(tiny_config(
        "objectives=logits_kd", "+objectives.repetition={weight: 1.0, span: 4}",
        "training.max_steps=2", "training.checkpoint_every=10"))
    penalty = losses_by_step(run_dir, "train/repetition/loss")
    assert len(penalty) == 2 and all(0 < v < float("inf") for v in penalty.values())
    assert len(losses_by_step(run_dir, "train/logits_distill/loss")) == 2


def test_on_policy_distillation_trains_beside_kd_and_is_logged(tiny_config):
    run_dir = train_run.train(tiny_config(
        "objectives=logits_kd",
        "+objectives.on_policy_distill={weight: 1.0, rows: 1, prompt_tokens: 4, new_tokens: 6}",
        "training.max_steps=2", "training.checkpoint_every=10"))
    kl = losses_by_step(run_dir, "train/on_policy_distill/loss")
    assert len(kl) == 2 and all(0 < v < float("inf") for v in kl.values())
    assert len(losses_by_step(run_dir, "train/logits_distill/loss")) == 2


def test_unknown_and_mistyped_keys_are_named(tiny_config):
    with pytest.raises(ValueError, match="max_stpes"):
        tiny_config("training.max_stpes=3")
    with pytest.raises(ValueError, match="max_steps"):
        tiny_config("training.max_steps=many")


def test_unknown_objective_is_named(tiny_config):
    config = tiny_config("+objectives.telepathy.weight=1.0", "training.max_steps=1")
    with pytest.raises(ValueError, match="telepathy"):
        train_run.train(config)


def test_secrets_never_reach_the_run_folder(tiny_config, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "supersecret-key-123")
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret456")
    run_dir = train_run.train(tiny_config("training=stage1_subln"))
    for path in run_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert b"supersecret" not in data, path
    from wrinklefree.train.config import scrub_secrets

    scrubbed = scrub_secrets({"a": {"HF_TOKEN": "hf_secret", "max_tokens": 5}})
    assert scrubbed == {"a": {"HF_TOKEN": "***", "max_tokens": 5}}


def test_wandb_requested_but_unavailable_falls_back(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.warns(UserWarning, match="wandb package is not installed"):
        assert train_run.wandb_logger_or_none("p", tmp_path) is None


def test_ddp_on_cpu_keeps_ranks_identical(tiny_source, text_files, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "wrinklefree.cli", "train", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", f"model.source={tiny_source}",
        f"data.sources=[{{name: words, path: '{text_files['words']}'}}]",
        f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=32", "model.calibration_batches=1",
        "model.convert.fp_layers=[]",  # the demo keeps 3 layers full precision; tiny has 2
        "training.batch_size=2", "training.max_steps=3", "training.val_windows=2",
        "training.val_every=1000", "training.sample_tokens=4", "training.eval_before=false",
        "logging.progress_bar=false", "logging.tensorboard=false", f"run_dir={run_dir}",
        # the demo's rounding to GGUF types, here before step 2: the rounded parameters keep
        # requires_grad (DDP's reducer waits for every one) and the optimizer skips them
        "training.gguf_round_at=0.34",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["world_size"] == 2
    first, second = report["ddp_weight_checksums"]
    assert first == second
    assert torch.isfinite(torch.tensor(report["trained"]["perplexity"]))
