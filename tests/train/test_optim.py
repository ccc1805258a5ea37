"""Optimizers, learning-rate schedules and ZClip against hand-computed values."""

from __future__ import annotations

import copy

import pytest
import torch

from wrinklefree.train.optim import ZClip, build_optimizer, can_fuse, lr_multiplier


def test_lr_multiplier_hand_values():
    # linear warm-up over 4 steps: (step + 1) / 4
    assert lr_multiplier(0, "cosine", 14, 4) == pytest.approx(0.25)
    assert lr_multiplier(3, "cosine", 14, 4) == pytest.approx(1.0)
    # cosine after warm-up: 0.1 + 0.9 * 0.5 * (1 + cos(pi * t)), t = (step - 4) / 10
    assert lr_multiplier(4, "cosine", 14, 4) == pytest.approx(1.0)
    assert lr_multiplier(9, "cosine", 14, 4) == pytest.approx(0.55)
    assert lr_multiplier(14, "cosine", 14, 4) == pytest.approx(0.1)
    # wsd, total 10, decay over the last 20%: stable until step 8, then linear to 0.1 at step 10
    assert lr_multiplier(7, "wsd", 10, 0) == pytest.approx(1.0)
    assert lr_multiplier(9, "wsd", 10, 0) == pytest.approx(0.55)
    assert lr_multiplier(5, "constant", 10, 0) == 1.0
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_multiplier(5, "linear", 10, 0)


def _set_grad_norm(p: torch.nn.Parameter, norm: float) -> None:
    p.grad = torch.zeros_like(p)
    p.grad[0] = norm


def test_zclip_clips_a_spike_to_mean_plus_z_std():
    p = torch.nn.Parameter(torch.zeros(4))
    clip = ZClip(alpha=0.5, z_thresh=1.0, warmup=2, max_norm=None)
    for norm in (1.0, 3.0):  # warm-up: mean 2, population variance 1
        _set_grad_norm(p, norm)
        assert clip([p]) == pytest.approx(norm)
    assert (clip.mean, clip.var) == pytest.approx((2.0, 1.0))
    _set_grad_norm(p, 10.0)  # z = (10 - 2) / 1 = 8 > 1: clipped to 2 + 1 * 1 = 3
    assert clip([p]) == pytest.approx(10.0)
    assert float(p.grad.norm()) == pytest.approx(3.0, rel=1e-5)
    # EMA with the clipped norm: mean = 0.5 * 2 + 0.5 * 3, var = 0.5 * 1 + 0.5 * (3 - 2.5)^2
    assert (clip.mean, clip.var) == pytest.approx((2.5, 0.625), rel=1e-5)


def test_adamw_is_fused_on_cpu_and_steps_like_the_loop(llama):
    reference = copy.deepcopy(llama)
    fused = build_optimizer(llama, "adamw", 1e-3, 0.1, [0.9, 0.95])
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.1,
                             betas=(0.9, 0.95))
    ids = torch.randint(0, llama.config.vocab_size, (2, 8))
    for model, optimizer in ((llama, fused), (reference, loop)):
        for _ in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(llama.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fusing_needs_one_cpu_or_cuda_device_and_float_tensors():
    assert can_fuse([torch.zeros(2), torch.zeros(3)])
    assert not can_fuse([torch.zeros(2), torch.zeros(2, device="meta")])
    assert not can_fuse([torch.zeros(2, dtype=torch.int64)])


def test_muon_takes_hidden_matrices_and_adamw_the_rest(llama):
    optimizer = build_optimizer(llama, "muon", 1e-3, 0.0, [0.9, 0.95])
    muon_params = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    names = {n for n, p in llama.named_parameters() if id(p) in muon_params}
    assert names and all(n.endswith("proj.weight") for n in names)
    assert optimizer.adamw.defaults["fused"] is True
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(llama, "sgd", 1e-3, 0.0, [0.9, 0.95])
