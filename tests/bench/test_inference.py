"""bench/inference.py on an already converted model (issue 31 item 15): used as it is, not
converted a second time (which failed with a misleading "no nn.Linear" message)."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import torch
from tiny_models import tiny_model
from transformers import GPT2Tokenizer

from wrinklefree import assets
from wrinklefree.convert import convert_model_to_bitnet, load_bitnet

INFERENCE = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "inference.py"))


def test_a_converted_model_is_benchmarked_as_it_is(tmp_path):
    source = tmp_path / "converted"
    converted = convert_model_to_bitnet(tiny_model("llama"), calibrate=False)
    converted.save_pretrained(source)
    GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab")) \
        .save_pretrained(source)
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = argparse.Namespace(model=str(source), prompt_len=8)
    skipped = INFERENCE["prepare"](args, workdir, ["fp32", "fakequant"])
    assert skipped == [{"key": "fp32", "name": "PyTorch fp32",
                        "note": f"skipped: {source} is already converted (no unconverted model "
                                "to time)"}]
    assert not (workdir / "fp32").exists()
    benchmarked = load_bitnet(workdir / "ternary")
    for name, weight in converted.state_dict().items():  # the embedding gained a mask row
        part = tuple(slice(0, n) for n in weight.shape)
        torch.testing.assert_close(benchmarked.state_dict()[name][part], weight)
