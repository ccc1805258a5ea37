"""The package root exports the public entry points (issue 15 item 21), lazily."""

import subprocess
import sys

import pytest

import wrinklefree as wf


def test_public_entry_points_are_at_the_root():
    from wrinklefree.convert import convert_model_to_bitnet, load_bitnet
    from wrinklefree.nn import BitLinear, set_quant_lambda
    from wrinklefree.objectives import create_objective_manager

    assert wf.convert_model_to_bitnet is convert_model_to_bitnet
    assert wf.load_bitnet is load_bitnet
    assert wf.BitLinear is BitLinear
    assert wf.set_quant_lambda is set_quant_lambda
    assert wf.create_objective_manager is create_objective_manager
    for name in wf.__all__:
        assert getattr(wf, name) is not None
        assert name in dir(wf)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="public names"):
        _ = wf.no_such_thing


def test_import_is_cheap():
    code = "import sys, wrinklefree; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_example_runs_on_a_tiny_model(tmp_path):
    """The README's Python example, on a tiny model saved with a tokenizer (so SubLN is
    calibrated on the built-in text, as for smollm2)."""
    import torch
    from tiny_models import tiny_model
    from transformers import GPT2Tokenizer

    from wrinklefree import assets

    tokenizer = GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab"))
    source = tmp_path / "source"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)

    model = wf.load_model(str(source))
    wf.convert_model_to_bitnet(model)
    model.save_pretrained(tmp_path / "bitnet")
    again = wf.load_bitnet(tmp_path / "bitnet")
    x = torch.randint(0, len(tokenizer), (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model.eval()(x).logits)
