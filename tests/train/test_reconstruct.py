"""Layer-by-layer reconstruction (train/reconstruct.py) on tiny random models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import ARCHITECTURES, tiny_model

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.eval.report import format_report
from wrinklefree.train.reconstruct import _relative_error, reconstruct_layers


def _batches(vocab: int, count: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (2, 16), generator=generator)}
            for _ in range(count)]


def _kl_to_teacher(student, teacher, batches) -> float:
    """Mean KL(teacher || student) of the next-token distributions over the batches."""
    with torch.no_grad():
        total = 0.0
        for batch in batches:
            t = F.log_softmax(teacher(**batch).logits.double(), -1)  # (B, L, V)
            s = F.log_softmax(student(**batch).logits.double(), -1)
            total += float((t.exp() * (t - s)).sum(-1).mean())
    return total / len(batches)


def test_relative_error_against_hand_values():
    # per token: [3, 4] vs [0, 4] -> 9 / 16; [1] vs [2] -> 1 / 4; [2] vs [2] -> 0; mean of three
    outputs = [torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0], [2.0]]])]
    targets = [torch.tensor([[[0.0, 4.0]]]), torch.tensor([[[2.0], [2.0]]])]
    assert _relative_error(outputs, targets) == pytest.approx((9 / 16 + 1 / 4 + 0) / 3)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_reconstruction_brings_the_ternary_student_closer_to_its_teacher(arch):
    teacher = tiny_model(arch, num_hidden_layers=3)
    student = convert_model_to_bitnet(copy.deepcopy(teacher), insert_subln=False)
    batches = _batches(teacher.config.vocab_size)
    before = _kl_to_teacher(student, teacher, batches)
    errors = reconstruct_layers(student, teacher, batches, epochs=8, lr=3e-3, progress=False)
    student.eval()
    # on the calibration windows: random tokens of a random model have nothing to generalise
    after = _kl_to_teacher(student, teacher, batches)
    assert len(errors) == 3 and all(0 < e < 1 for e in errors)
    assert after < 0.7 * before, (before, after)
    assert not any(p.requires_grad for p in teacher.parameters()) or all(
        p.grad is None for p in teacher.parameters())  # the teacher is never trained


def test_reconstruction_trains_the_low_rank_correction_with_the_layer():
    # the demo's LRC factors are parameters of the layer: the reconstruction fits them together
    # with the latent weights, so they leave their SVD initialisation
    teacher = tiny_model("llama", num_hidden_layers=2)
    student = convert_model_to_bitnet(copy.deepcopy(teacher), insert_subln=False, lrc_rank=0.25)
    layer = student.model.layers[1].mlp.down_proj
    u_before, w_before = layer.lrc_U.detach().clone(), layer.weight.detach().clone()
    reconstruct_layers(student, teacher, _batches(teacher.config.vocab_size), epochs=2, lr=3e-3,
                       progress=False)
    assert not torch.equal(layer.lrc_U, u_before) and not torch.equal(layer.weight, w_before)


def test_a_student_equal_to_its_teacher_is_left_as_it_is():
    """Quantization off and no SubLN: the converted model is the teacher (the correctness anchor),
    so every layer's error is 0 and no weight moves (the loss and its gradient are 0)."""
    teacher = tiny_model("llama", num_hidden_layers=2)
    student = convert_model_to_bitnet(copy.deepcopy(teacher), insert_subln=False, quant_lambda=0.0,
                                      quantize_activations=False)
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    errors = reconstruct_layers(student, teacher, _batches(teacher.config.vocab_size), epochs=2,
                                lr=1e-2, progress=False)
    assert errors == pytest.approx([0.0, 0.0], abs=1e-10)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


def test_layers_that_already_match_the_teacher_are_not_trained(monkeypatch):
    """Full-precision first layers (fp_layers) see the teacher's own input: exact output, no fit;
    the ternary layer behind them is fitted."""
    import wrinklefree.train.reconstruct as reconstruct

    teacher = tiny_model("llama", num_hidden_layers=3)
    student = convert_model_to_bitnet(copy.deepcopy(teacher), insert_subln=False, fp_layers=[0, 1])
    fitted = []
    fit = reconstruct._fit_layer
    monkeypatch.setattr(reconstruct, "_fit_layer", lambda layer, *a: fitted.append(layer) or fit(
        layer, *a))
    errors = reconstruct_layers(student, teacher, _batches(teacher.config.vocab_size), epochs=1,
                                lr=1e-3, progress=False)
    assert fitted == [student.model.layers[2]]
    assert errors[:2] == [0.0, 0.0] and errors[2] > 0


def test_zero_epochs_is_a_no_op():
    teacher = tiny_model("llama")
    student = convert_model_to_bitnet(copy.deepcopy(teacher), insert_subln=False)
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    assert reconstruct_layers(student, teacher, _batches(128), epochs=0, lr=1e-3) == []
    for name, value in student.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_wf_train_reconstructs_before_training_and_reports_it(tiny_config):
    from wrinklefree.train.run import train

    cfg = tiny_config("training.max_steps=1", "training.reconstruct.epochs=1",
                      "training.reconstruct.batches=2", "training.eval_before=true",
                      "overwrite=true")
    run_dir = train(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["reconstruction_errors"]) == 2
    assert "reconstructed" in report and report["reconstructed"]["perplexity"]
    table = format_report(report)  # what wf train prints: the row between converted and trained
    names = [line.split()[0] for line in table.splitlines()[2:6]]
    assert names == ["teacher", "converted", "reconstructed", "trained"]


def test_reconstruction_without_a_teacher_is_refused_with_the_fix(tiny_config):
    from wrinklefree.errors import UserInputError
    from wrinklefree.train.run import train

    cfg = tiny_config("training.max_steps=1", "training.reconstruct.epochs=1", "model.teacher=null")
    with pytest.raises(UserInputError, match="model.teacher"):
        train(cfg)
