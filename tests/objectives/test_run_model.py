"""run_model: flags, q/k/v capture (shapes and values), hook cleanup, eager switch, and the
teacher's clean-window forward on a DLM batch."""

import torch

from wrinklefree.objectives import DLMObjective, Requirements, run_model
from wrinklefree.objectives.forward import decoder_layers


def test_qkv_capture_matches_the_projections(model, make_batch):
    model.eval()
    batch = make_batch(batch=2, length=6)
    out = run_model(model, batch, Requirements(hidden_states=True, qkv_layers=[1, -1]))
    q, k, v = out.qkv[1]
    assert q.shape == (2, 4, 6, 16) and k.shape == (2, 2, 6, 16) and v.shape == (2, 2, 6, 16)
    layer = decoder_layers(model)[1]
    with torch.no_grad():
        normed = layer.input_layernorm(out.hidden_states[1])  # input of layer 1
        expected_k = layer.self_attn.k_proj(normed).view(2, 6, 2, 16).transpose(1, 2)
    assert torch.allclose(k, expected_k, atol=1e-6)
    assert torch.equal(out.qkv[-1][0], q)  # -1 is the same (last) layer
    projections = [
        m for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))
    ]
    assert not any(m._forward_hooks for m in projections)  # capture hooks removed


def test_flags_follow_requirements(model, make_batch):
    batch = make_batch()
    plain = run_model(model, batch, Requirements())
    assert plain.hidden_states is None and plain.qkv == {}
    assert model.config._attn_implementation == "sdpa"
    maps = run_model(model, batch, Requirements(attentions=True))
    assert model.config._attn_implementation == "eager"
    assert len(maps.attentions) == 2 and maps.attentions[0].shape == (2, 4, 8, 8)


def test_teacher_sees_the_clean_window_once(model, make_batch):
    model.eval()
    batch = make_batch(batch=2, length=8)
    dlm = DLMObjective(mask_token_id=127, mask_prob=0.5, allow_vocab_mask_token=True)
    prepared = dlm.preprocess_batch(batch)
    req = Requirements(hidden_states=True, qkv_layers=[0])
    with torch.no_grad():
        teacher = run_model(model, prepared, req, teacher=True)
        full = run_model(model, batch, req)
        student = run_model(model, prepared, req)
    assert teacher.logits.shape == (2, 8, 128)
    assert torch.allclose(teacher.logits, full.logits, atol=1e-5)
    assert torch.allclose(teacher.hidden_states[-1], full.hidden_states[-1], atol=1e-5)
    assert torch.allclose(teacher.qkv[0][2], full.qkv[0][2], atol=1e-5)
    assert torch.allclose(student.logits, full.logits, atol=1e-5)  # the clean view
    assert not torch.allclose(student.dlm_logits[:2], full.logits, atol=1e-3)  # masked views
