"""The storage report (wrinklefree.export.size): by hand on a tiny hybrid model, and byte for
byte against the GGUF files the exporter writes."""

from __future__ import annotations

import math

import gguf
import pytest
from tiny_bitnet import save_tiny

from wrinklefree.export.gguf import GGUFOptions, export_gguf
from wrinklefree.export.size import format_storage, storage_report
from wrinklefree.llamacpp import adapter_path
from wrinklefree.models import load_model

# TINY: hidden 256, ffn 512, 4 heads of 64, 2 kv heads (k/v rows 128), vocab 384, 2 layers
PER_LAYER = {"q": 256 * 256, "k": 128 * 256, "v": 128 * 256, "o": 256 * 256,
             "gate": 512 * 256, "up": 512 * 256, "down": 256 * 512}  # 589,824 weights
RANK = 8
LRC = {"q": 256 + 256, "k": 256 + 128, "v": 256 + 128, "o": 256 + 256, "gate": 256 + 512,
       "up": 256 + 512, "down": 512 + 256}  # (in + out) per unit of rank


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    """Layer 0 full precision with SubLN, layer 1 ternary with an LRC of rank 8."""
    return save_tiny(tmp_path_factory.mktemp("hybrid") / "model", fp_layers=[0],
                     fp_layers_subln=True, lrc_rank=RANK)


def test_storage_by_hand(hybrid_dir):
    report = storage_report(load_model(str(hybrid_dir)), GGUFOptions(lora_type="f16"))
    per_layer = sum(PER_LAYER.values())
    lrc = RANK * sum(LRC.values())  # 32,768
    assert report["decoder_linear_weights"] == 2 * per_layer
    assert report["ternary_weights"] == per_layer
    fp = report["full_precision_parameters"]
    assert (fp["fp_layers"], fp["lrc"], fp["scales"]) == (per_layer, lrc, 7)
    assert fp["embeddings"] == 384 * 256
    # norms: output 256; per layer input + post-attention 256 each, SubLNs 256 + 512
    assert fp["norms"] == 256 + 2 * (256 + 256 + 256 + 512)
    stored = (per_layer * math.log2(3) + (per_layer + lrc + 7) * 16) / (2 * per_layer)
    assert report["bits_per_linear_weight"]["stored"] == pytest.approx(stored)
    parts = report["gguf"]["bytes"]
    # TQ2_0: 66 bytes per 256 weights (an LRC layer's scale is folded into the blocks, no f32
    # `.scale`); Q8_0: 34 bytes per 32; F16 LoRA: 2 bytes per value
    assert parts == {"ternary": per_layer * 66 // 256, "fallback": 0,
                     "fp_layers": per_layer * 34 // 32, "embeddings": 384 * 256 * 34 // 32,
                     "norms": 4 * fp["norms"], "correction": 2 * lrc}
    linear_bytes = parts["ternary"] + parts["fp_layers"] + parts["correction"]
    assert report["bits_per_linear_weight"]["exported"] == pytest.approx(
        8 * linear_bytes / (2 * per_layer))


def test_q4_0_adapter_pads_the_rank_to_whole_blocks(hybrid_dir):
    report = storage_report(load_model(str(hybrid_dir)), GGUFOptions(lora_type="q4_0"))
    # rank 8 -> 32 (B's rows of r in whole Q4_0 blocks): 18 bytes per 32 values
    assert report["gguf"]["bytes"]["correction"] == 32 * sum(LRC.values()) * 18 // 32


@pytest.mark.parametrize("options", [GGUFOptions(), GGUFOptions(
    weight_type="tq1_0", embed_type="f16", fp_type="q4_0", lora_type="q8_0")])
def test_sizes_are_the_written_files_byte_for_byte(hybrid_dir, tmp_path, options):
    model = load_model(str(hybrid_dir))
    path = tmp_path / "m.gguf"
    written = export_gguf(model, path, hybrid_dir, **options.__dict__)
    report = storage_report(model, options, tokenizer_dir=hybrid_dir, name="m")
    assert report["gguf"]["model_file_bytes"] == path.stat().st_size
    assert report["gguf"]["adapter_file_bytes"] == adapter_path(path).stat().st_size
    for file in (path, adapter_path(path)):
        for t in gguf.GGUFReader(file).tensors:
            assert written[t.name] == (t.tensor_type.name, int(t.n_bytes)), t.name
    assert sum(report["gguf"]["bytes"].values()) == sum(b for _, b in written.values())


def test_refused_model_is_counted_with_the_reason(tmp_path):
    folder = save_tiny(tmp_path / "fp", num_hidden_layers=3, fp_layers=[0])
    report = storage_report(load_model(str(folder)))
    assert "fp_layers_subln=true" in report["gguf"]["refused"]
    assert report["gguf"]["bytes"]["fp_layers"] == sum(PER_LAYER.values()) * 34 // 32
    text = format_storage(report)
    assert "sizes once exportable" in text and "bits per decoder-linear weight" in text


def test_format_storage_names_every_part(hybrid_dir):
    text = format_storage(storage_report(load_model(str(hybrid_dir)), tokenizer_dir=hybrid_dir))
    first, second = text.splitlines()
    assert first.startswith("stored: ") and "1.18 M: 0.59 M ternary" in first
    assert "0.59 M in full-precision linears, 0.03 M LRC, 7 scales" in first
    for word in ("ternary", "fp layers", "embeddings", "norms", "metadata", "LoRA adapter"):
        assert word in second


def test_train_report_prints_the_students_storage(hybrid_dir):
    from wrinklefree.eval.report import format_report

    row = {"perplexity": 9.0, "domains": {"asv": 9.0}, "samples": []}
    storage = storage_report(load_model(str(hybrid_dir)))
    table = format_report({"teacher": row, "trained": row, "storage": storage})
    assert "student stored: " in table
    assert f"{storage['bits_per_linear_weight']['exported']:.2f} bits" in table
