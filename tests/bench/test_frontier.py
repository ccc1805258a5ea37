"""The frontier benchmark's arithmetic (bench/frontier.py): Pareto set, GGUF byte counts, bits
per linear weight and per-window NLL, on hand-made inputs. The llama.cpp run end to end is in
tests/export/test_llamacpp_frontier.py."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest

FRONTIER = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "frontier.py"))


def test_pareto_front_by_hand():
    points = [(10, 5), (20, 3), (15, 6), (30, 3), (5, 9), (20, 2)]
    # (5, 9) lightest; (10, 5) better than everything lighter; (20, 2) beats (20, 3) and
    # (30, 3); (15, 6) is beaten by (10, 5)
    assert FRONTIER["pareto_front"](points) == [4, 0, 5]
    assert FRONTIER["pareto_front"]([(1, 1), (1, 1)]) == [0]  # a tie is not a second point
    assert FRONTIER["pareto_front"]([]) == []


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], quantized: dict | None = None,
                adapter: bool = False) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "bitnet")
    if adapter:
        writer.add_type("adapter")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 1])
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    for name, (data, qtype) in (quantized or {}).items():
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_read_gguf_and_bits_per_linear_weight_by_hand(tmp_path):
    import gguf

    rng = np.random.default_rng(0)
    model = _write_gguf(tmp_path / "m.gguf", {
        "blk.0.attn_q.scale": np.ones(1, dtype=np.float32),  # 4 bytes
        "token_embd.weight": np.zeros((16, 32), dtype=np.float16),  # not a decoder linear
    }, {"blk.0.attn_q.weight": (rng.standard_normal((4, 64)).astype(np.float32),
                                gguf.GGMLQuantizationType.Q8_0)})  # 256 weights, 8 x 34 bytes
    meta, tensors = FRONTIER["read_gguf"](model)
    assert meta["general.architecture"] == "bitnet" and meta["tokenizer.ggml.model"] == "gpt2"
    assert tensors == {"blk.0.attn_q.scale": (1, 4), "token_embd.weight": (512, 1024),
                       "blk.0.attn_q.weight": (256, 272)}
    adapter = _write_gguf(tmp_path / "m.lora.gguf", {
        "blk.0.attn_q.weight.lora_a": np.zeros((2, 64), dtype=np.float32),  # 512 bytes
        "blk.0.attn_q.weight.lora_b": np.zeros((4, 2), dtype=np.float32),  # 32 bytes
    }, adapter=True)
    assert FRONTIER["read_gguf"](adapter)[0]["general.type"] == "adapter"
    assert FRONTIER["linear_bits"](model, None) == pytest.approx(8 * (272 + 4) / 256)
    assert FRONTIER["linear_bits"](model, adapter) == pytest.approx(8 * 820 / 256)


def test_read_gguf_refuses_other_files(tmp_path):
    other = tmp_path / "x.gguf"
    other.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        FRONTIER["read_gguf"](other)


def test_window_nll_by_hand():
    ids = np.array([0, 1, 0])
    scores = np.array([[0.0, 0.0],  # p(1) = 1/2
                       [math.log(3), 0.0],  # p(0) = 3/4
                       [5.0, -5.0]])  # the last position predicts nothing scored
    assert FRONTIER["window_nll"](scores, ids) == pytest.approx(math.log(2) + math.log(4 / 3))


def test_students_are_gguf_files_or_folders_of_them(tmp_path):
    from wrinklefree.errors import UserInputError

    student_files = FRONTIER["student_files"]
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(UserInputError, match="holds no .gguf model: export the student"):
        student_files([str(empty)], None)
    with pytest.raises(UserInputError, match="not a .gguf file or a folder"):
        student_files([str(tmp_path / "missing.gguf")], None)
    (empty / "a.gguf").write_bytes(b"GGUF")
    (empty / "a.lora.gguf").write_bytes(b"GGUF")
    (empty / "b.gguf").write_bytes(b"GGUF")
    found = student_files([str(empty)], None)
    assert [(label, m.name, a and a.name) for label, m, a in found] == [
        ("run/a", "a.gguf", "a.lora.gguf"), ("run/b", "b.gguf", None)]
    with pytest.raises(UserInputError, match="names one adapter for 2 students"):
        student_files([str(empty)], str(empty / "a.lora.gguf"))
    assert student_files([str(empty / "b.gguf")], "none")[0][2] is None


def test_without_llama_cpp_the_bench_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    from wrinklefree.errors import UserInputError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(UserInputError, match=r"WF_WITH_LLAMACPP=1 ./scripts/install.sh"):
        FRONTIER["main"](["--out", str(tmp_path / "frontier")])
    assert not (tmp_path / "frontier").exists()  # nothing written


def test_power_law_fit_by_hand():
    """ratio - 1 = c * D^-alpha (Kaplan et al. 2020, eq. 1.2) through (1e4, 11) and (1e6, 2):
    alpha = ln(10 / 1) / ln(1e6 / 1e4) = 0.5, c = 1 * (1e6)^0.5 = 1000, and 1.1x where
    1000 * D^-0.5 = 0.1, i.e. D = 1e8."""
    fit = FRONTIER["fit_power_law"]([1e4, 1e6, 1e5], [11.0, 2.0, 0.9], target=1.1)
    assert fit["points"] == 2  # the point at or under 1 is left out
    assert fit["alpha"] == pytest.approx(0.5)
    assert fit["c"] == pytest.approx(1000.0)
    assert fit["tokens_at_target"] == pytest.approx(1e8)
    rising = FRONTIER["fit_power_law"]([1e4, 1e6], [2.0, 3.0], target=1.3)
    assert rising["tokens_at_target"] is None and rising["alpha"] < 0


def test_curve_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    from wrinklefree.errors import UserInputError

    with pytest.raises(UserInputError, match=r"--curve .*not a finished training run"):
        FRONTIER["curve_points"]([str(tmp_path)], tmp_path / "curve")
    with pytest.raises(UserInputError, match=r"--target 1.0: a ratio to the teacher above 1"):
        FRONTIER["parse_args"](["--target", "1.0"])
    with pytest.raises(UserInputError, match=r"--speed-repeats 0: at least 1"):
        FRONTIER["parse_args"](["--speed-repeats", "0"])
