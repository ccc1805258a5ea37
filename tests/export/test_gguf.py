"""GGUF writer: tensor types, exact ternary content, metadata, architecture choice, CLI."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tiny_bitnet import save_tiny

from wrinklefree.cli import main
from wrinklefree.export.blocks import decode_q2_0, decode_q4_0
from wrinklefree.export.gguf import (
    GGUFOptions,
    _permute_for_rope,
    export_gguf,
    fp_tensor_type,
    round_to_gguf,
    ternary_tensor_type,
)
from wrinklefree.llamacpp import adapter_path
from wrinklefree.models import load_model
from wrinklefree.nn.ternary import ternary_state

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("weight_type, fallback, in_features, expected", [
    ("tq2_0", "q4_0", 512, "TQ2_0"),
    ("tq1_0", "q4_0", 256, "TQ1_0"),
    ("tq2_0", "q4_0", 576, "Q4_0"),  # SmolLM2's hidden size: not whole 256-blocks
    ("tq2_0", "q2_0", 576, "Q2_0"),  # 576 = 9 * 64
    ("tq1_0", "q2_0", 96, "Q4_0"),  # 96 = 3 * 32, not whole 64-blocks: the next exact type
    ("q2_0", "q4_0", 96, "Q4_0"),
    ("q4_0", "q4_0", 512, "Q4_0"),
    ("f16", "q4_0", 100, "F16"),
])
def test_ternary_tensor_type_fallback(weight_type, fallback, in_features, expected):
    assert ternary_tensor_type(weight_type, in_features, fallback=fallback) == expected


def test_no_exact_type_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"blk.0.attn_q.weight: rows of 100 .* --type f16"):
        ternary_tensor_type("tq2_0", 100, tensor="blk.0.attn_q.weight")


def test_embedding_q6_k_falls_back_like_llama_quantize():
    assert fp_tensor_type("q6_k", 512) == "Q6_K"
    with pytest.warns(UserWarning, match="rows of 576 are not whole Q6_K blocks"):
        assert fp_tensor_type("q6_k", 576) == "Q8_0"
    with pytest.warns(UserWarning, match="stored as F16"):
        assert fp_tensor_type("q8_0", 100) == "F16"


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
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0  # the compact default
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


def test_full_precision_layers_are_refused_with_the_fix(tmp_path):
    folder = save_tiny(tmp_path / "fp", num_hidden_layers=3, fp_layers=[0])
    with pytest.raises(ValueError, match="fp_layers / exclude.*model.convert.fp_layers_subln=true"):
        export_gguf(load_model(str(folder)), tmp_path / "m.gguf", folder)


def test_unknown_type_is_named(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="'q3_k'"):
        export_gguf(load_model(str(tiny_dir)), tmp_path / "m.gguf", tiny_dir, weight_type="q3_k")
    with pytest.raises(ValueError, match="'q4_k'"):
        export_gguf(load_model(str(tiny_dir)), tmp_path / "m.gguf", tiny_dir, embed_type="q4_k")


@pytest.mark.parametrize("weight_type, decode", [("q4_0", decode_q4_0), ("q2_0", decode_q2_0)])
def test_q4_0_and_q2_0_files_hold_exact_codes(tmp_path, weight_type, decode):
    """A model whose widths (320, 640) are not 256-blocks: every projection in the fallback type,
    codes exact with d = 1 and the absmean scale in `.scale`."""
    folder = save_tiny(tmp_path / "odd", hidden_size=320, intermediate_size=640,
                       num_attention_heads=5, num_key_value_heads=5)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    with pytest.warns(UserWarning, match="320 are not whole Q6_K blocks"):
        sizes = export_gguf(model, path, folder, fallback_type=weight_type, embed_type="q6_k")
    layer = model.model.layers[0].mlp.down_proj
    codes, _ = ternary_state(layer)
    assert sizes["blk.0.ffn_down.weight"] == (weight_type.upper(), 320 * 640 // 64 * 18
                                              * (2 if weight_type == "q4_0" else 1))
    assert sizes["token_embd.weight"][0] == "Q8_0"  # 320 is not whole 256-blocks of Q6_K
    data = _raw_tensor(path, "blk.0.ffn_down.weight", sizes)
    assert np.array_equal(decode(data.reshape(320, -1), 640), codes.float().numpy())


def _raw_tensor(path: Path, name: str, sizes: dict) -> np.ndarray:
    """The bytes of one tensor, found by order and size (GGUFReader cannot parse type Q2_0):
    tensors are written in order, each padded to 32 bytes (GGUF spec, general.alignment)."""
    nbytes = [b for _, b in sizes.values()]
    index = list(sizes).index(name)
    starts = np.cumsum([0] + [-(-b // 32) * 32 for b in nbytes])
    blob = path.read_bytes()
    begin = len(blob) - starts[-1] + starts[index]  # the data section ends the file
    return np.frombuffer(blob[begin:begin + nbytes[index]], dtype=np.uint8)


def test_cli_exports_a_run_folder(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (run / "final" / f.name).symlink_to(f)
    main(["export", str(run), str(tmp_path / "out.gguf"), "--type", "tq1_0"])
    out = capsys.readouterr().out
    assert "TQ1_0" in out and "tensors" in out and "total" in out
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


def test_cli_type_table_and_refusal(tmp_path, capsys):
    from wrinklefree.cli.model import format_type_table

    table = format_type_table({"a": ("Q4_0", 3 * 2**20), "b": ("F32", 2**20), "c": ("Q4_0", 0)})
    lines = table.splitlines()
    assert lines[1].split() == ["Q4_0", "2", "3.00", "75.0%"]
    assert lines[2].split() == ["F32", "1", "1.00", "25.0%"]
    assert lines[3].split()[:3] == ["total", "3", "4.00"]
    folder = save_tiny(tmp_path / "w80", hidden_size=80, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=4)  # 80: not whole 32-blocks
    with pytest.raises(SystemExit):
        main(["export", str(folder), str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert "rows of 80 weights fit no exact llama.cpp ternary type" in err and "--type f16" in err
    assert not (tmp_path / "x.gguf").exists()


def test_lrc_becomes_a_lora_adapter_beside_the_model(tmp_path):
    folder = save_tiny(tmp_path / "lrc", lrc_rank=8)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder, lora_type="f16")
    reader, tensors = _read(adapter_path(path))
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "general.architecture") == "bitnet"
    assert _field(reader, "adapter.type") == "lora"
    assert _field(reader, "adapter.lora.alpha") == 0.0  # scale 1 for every pair
    layer = model.model.layers[1].mlp.down_proj  # in 512, out 256
    a, b = tensors["blk.1.ffn_down.weight.lora_a"], tensors["blk.1.ffn_down.weight.lora_b"]
    assert a.tensor_type == Q.F16 and a.data.shape == (8, 512)  # A = V^T (r, in)
    assert b.tensor_type == Q.F16 and b.data.shape == (256, 8)  # B = U (out, r)
    assert np.array_equal(a.data, layer.lrc_V.detach().numpy().T.astype(np.float16))
    assert np.array_equal(b.data, layer.lrc_U.detach().numpy().astype(np.float16))
    assert len(tensors) == 2 * 7 * 2  # every projection of both layers
    _, base = _read(path)
    assert not any("lora" in name for name in base)
    folder2 = save_tiny(tmp_path / "plain")
    export_gguf(load_model(str(folder2)), path, folder2)  # the same path, now without LRC
    assert not adapter_path(path).exists()  # a stale correction must not load with it


def test_lora_b_of_q_and_k_is_permuted_like_the_base_in_llama_arch(tmp_path):
    folder = save_tiny(tmp_path / "plain", insert_subln=False, tie_word_embeddings=False,
                       lrc_rank=8)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder, lora_type="f16")
    _, tensors = _read(adapter_path(path))
    u = model.model.layers[0].self_attn.k_proj.lrc_U.detach().numpy()  # (128, 8): 2 kv heads
    expected = _permute_for_rope(u, n_head=2).astype(np.float16)
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_b"].data, expected)


def test_q8_0_adapter_pads_the_rank_with_zero_factors(tmp_path):
    folder = save_tiny(tmp_path / "lrc", lrc_rank=8)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder, lora_type="q8_0")
    _, tensors = _read(adapter_path(path))
    a = tensors["blk.0.ffn_up.weight.lora_a"]
    assert a.tensor_type == Q.Q8_0
    values = gguf.quants.dequantize(a.data, Q.Q8_0).reshape(32, 256)  # rank 8 -> 32
    v_t = model.model.layers[0].mlp.up_proj.lrc_V.detach().numpy().T
    assert not values[8:].any()
    assert np.abs(values[:8] - v_t).max() <= np.abs(v_t).max() / 127 + 1e-6  # one int8 step


@pytest.mark.parametrize("fp_type", ["f16", "q8_0", "q4_0"])
def test_full_precision_layers_with_subln_export_at_fp_type(tmp_path, fp_type):
    folder = save_tiny(tmp_path / "fp", num_hidden_layers=3, fp_layers=[0],
                       fp_layers_subln=True)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    sizes = export_gguf(model, path, folder, fp_type=fp_type)
    reader, tensors = _read(path)
    assert _field(reader, "general.architecture") == "bitnet"
    layer = model.model.layers[0]
    t = tensors["blk.0.ffn_down.weight"]
    assert sizes["blk.0.ffn_down.weight"][0] == t.tensor_type.name == fp_type.upper()
    assert "blk.0.ffn_down.scale" not in tensors  # no ternary scale in a full-precision layer
    weight = layer.mlp.down_proj.weight.detach().numpy()
    values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weight.shape)
    step = {"f16": 1e-3, "q8_0": 1 / 127, "q4_0": 1 / 7}[fp_type]
    assert np.abs(values - weight).max() <= np.abs(weight).max() * step
    sub = tensors["blk.0.ffn_sub_norm.weight"].data
    assert np.array_equal(sub, layer.mlp.down_proj.sub_norm.weight.detach().numpy())
    assert tensors["blk.1.ffn_down.weight"].tensor_type == Q.TQ2_0


@pytest.mark.parametrize("type_name", ["q4_0", "q8_0"])
def test_round_to_gguf_makes_pytorch_hold_what_the_file_stores(tmp_path, type_name):
    folder = save_tiny(tmp_path / "hybrid", num_hidden_layers=3, fp_layers=[0],
                       fp_layers_subln=True, lrc_rank=8)
    model = load_model(str(folder))
    options = dict(embed_type=type_name, fp_type=type_name, lora_type=type_name)
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    rounded = round_to_gguf(model, GGUFOptions(**options))
    assert "embed_tokens" in rounded and "layers.0.mlp.down_proj.weight" in rounded
    assert "layers.1.mlp.up_proj.lrc_U" in rounded
    assert not torch.equal(before, model.model.layers[0].mlp.down_proj.weight)
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder, **options)
    _, tensors = _read(path)
    _, lora = _read(adapter_path(path))

    def stored(t, rows):  # the values llama.cpp reads, (rows, -1)
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(rows, -1)

    embed = model.get_input_embeddings().weight.detach().numpy()
    assert np.array_equal(stored(tensors["token_embd.weight"], embed.shape[0]), embed)
    down = model.model.layers[0].mlp.down_proj.weight.detach().numpy()  # full precision
    assert np.array_equal(stored(tensors["blk.0.ffn_down.weight"], down.shape[0]), down)
    up = model.model.layers[1].mlp.up_proj  # ternary + LRC: the adapter's factors
    v_t, u = up.lrc_V.detach().numpy().T, up.lrc_U.detach().numpy()
    a = stored(lora["blk.1.ffn_up.weight.lora_a"], 32)  # rank 8 padded to one block of 32
    b = stored(lora["blk.1.ffn_up.weight.lora_b"], u.shape[0])
    assert np.array_equal(a[:8], v_t) and np.array_equal(b[:, :8], u)
    again = {k: v.clone() for k, v in model.state_dict().items()}
    round_to_gguf(model, GGUFOptions(**options))  # the grid is a fixed point
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_export_options_name_the_flag_and_choices():
    with pytest.raises(ValueError, match=r"--lora-type 'q2_k'.*\('q8_0', 'f16', 'q4_0'\)"):
        GGUFOptions(lora_type="q2_k")
