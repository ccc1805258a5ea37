"""GGUF writer: tensor types, exact ternary content, metadata, architecture choice, CLI."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tiny_bitnet import save_tiny

from wrinklefree.cli import main
from wrinklefree.export.gguf import _permute_for_rope, _unit, export_gguf, ternary_tensor_type
from wrinklefree.export.pack import ternary_state
from wrinklefree.models import load_model

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("weight_type, in_features, expected", [
    ("tq2_0", 512, Q.TQ2_0),
    ("tq1_0", 256, Q.TQ1_0),
    ("tq2_0", 576, Q.Q8_0),  # SmolLM2's hidden size: not whole 256-blocks
    ("tq1_0", 100, Q.F16),  # not even whole 32-blocks
    ("f16", 576, Q.F16),
])
def test_ternary_tensor_type_fallback(weight_type, in_features, expected):
    assert ternary_tensor_type(weight_type, in_features) == expected


def test_q8_0_unit_is_127_times_f16_of_1_over_127():
    assert _unit(Q.Q8_0) == pytest.approx(127 * float(np.float16(1 / 127)), abs=0)
    assert _unit(Q.TQ2_0) == _unit(Q.TQ1_0) == _unit(Q.F16) == 1.0


def test_permute_for_rope_by_hand():
    # one head of dim 4: rotate-half pairs rows (0, 2) and (1, 3); llama.cpp wants them adjacent
    w = np.arange(4, dtype=np.float32).reshape(4, 1)
    assert _permute_for_rope(w, n_head=1).ravel().tolist() == [0, 2, 1, 3]


def _read(path: Path) -> tuple[gguf.GGUFReader, dict]:
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("weight_type, qtype", [("tq2_0", Q.TQ2_0), ("tq1_0", Q.TQ1_0),
                                                ("f16", Q.F16)])
def test_bitnet_gguf_holds_exact_codes_and_scales(tiny_dir, tmp_path, weight_type, qtype):
    model = load_model(str(tiny_dir))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, tiny_dir, weight_type=weight_type)
    reader, tensors = _read(path)
    assert _field(reader, "general.architecture") == "bitnet"
    assert _field(reader, "bitnet.block_count") == 2
    layer = model.model.layers[1].mlp.down_proj
    codes, scale = ternary_state(layer)
    t = tensors["blk.1.ffn_down.weight"]
    assert t.tensor_type == qtype
    decoded = gguf.quants.dequantize(t.data, qtype).reshape(codes.shape)
    assert np.array_equal(decoded, codes.float().numpy())
    assert tensors["blk.1.ffn_down.scale"].data[0] == pytest.approx(scale.item(), rel=1e-7)
    sub = tensors["blk.1.ffn_sub_norm.weight"].data
    assert np.array_equal(sub, layer.sub_norm.weight.detach().numpy())
    assert tensors["token_embd.weight"].tensor_type == Q.F16
    assert "output.weight" not in tensors  # bitnet ties the head to token_embd


def test_embed_type_q8_0_and_tokenizer_metadata(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir))
    model.config.mask_token_id = 7  # a diffusion student records its mask token like this
    path = tmp_path / "m.gguf"
    export_gguf(model, path, tiny_dir, embed_type="q8_0")
    reader, tensors = _read(path)
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0
    assert len(_field(reader, "tokenizer.ggml.tokens")) == model.config.vocab_size
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(_field(reader, "tokenizer.ggml.merges")) > 0
    assert _field(reader, "tokenizer.ggml.mask_token_id") == 7


def test_no_subln_model_is_llama_with_permuted_folded_q(tmp_path):
    folder = save_tiny(tmp_path / "plain", insert_subln=False, tie_word_embeddings=False)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder, weight_type="f16")
    reader, tensors = _read(path)
    assert _field(reader, "general.architecture") == "llama"
    assert "blk.0.attn_q.scale" not in tensors and "output.weight" in tensors
    codes, scale = ternary_state(model.model.layers[0].self_attn.q_proj)
    expected = _permute_for_rope((codes.float() * scale).numpy(), n_head=4)
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, expected.astype(np.float16))


def test_untied_subln_model_is_refused(tmp_path):
    folder = save_tiny(tmp_path / "untied", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="separate lm_head"):
        export_gguf(load_model(str(folder)), tmp_path / "m.gguf", folder)


def test_unknown_type_is_named(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="'q4_0'"):
        export_gguf(load_model(str(tiny_dir)), tmp_path / "m.gguf", tiny_dir, weight_type="q4_0")


def test_cli_exports_a_run_folder(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (run / "final" / f.name).symlink_to(f)
    main(["export", str(run), str(tmp_path / "out.gguf"), "--type", "tq1_0"])
    assert "TQ1_0" in capsys.readouterr().out
    reader, tensors = _read(tmp_path / "out.gguf")
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.TQ1_0


def test_cli_names_a_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), str(tmp_path / "x.gguf")])
    assert "config.json" in capsys.readouterr().err


def test_bf16_model_exports_the_same_codes(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir), dtype=torch.bfloat16)
    export_gguf(model, tmp_path / "m.gguf", tiny_dir)
    _, tensors = _read(tmp_path / "m.gguf")
    assert tensors["blk.0.attn_k.weight"].tensor_type == Q.TQ2_0
