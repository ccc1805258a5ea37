import copy
import json

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model

from wrinklefree.convert import BitNetConfig, convert_model_to_bitnet, load_bitnet
from wrinklefree.errors import UserInputError
from wrinklefree.nn import BitLinear


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("head", ["causal", "classification"])
def test_lambda0_without_subln_is_exact(arch, head):
    model = tiny_model(arch, head=head)
    x = torch.randint(1, 128, (2, 12))
    with torch.no_grad():
        reference = model(x).logits
        converted = copy.deepcopy(model)
        convert_model_to_bitnet(converted, insert_subln=False, quant_lambda=0)
        out = converted(x).logits
    assert sum(isinstance(m, BitLinear) for m in converted.modules()) == 2 * 7
    assert (out - reference).abs().max() < 1e-5


@pytest.mark.parametrize("head", ["causal", "classification"])
def test_heads_and_embeddings_stay_full_precision(head):
    model = convert_model_to_bitnet(tiny_model("qwen2", head=head), calibrate=False)
    for name, module in model.named_modules():
        if name.endswith(("lm_head", "score")):
            assert type(module) is torch.nn.Linear
    assert not isinstance(model.get_input_embeddings(), BitLinear)


def test_qwen2_biases_are_kept():
    model = convert_model_to_bitnet(tiny_model("qwen2"), calibrate=False)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, BitLinear) and q_proj.bias is not None


def test_subln_targets_only_output_projections():
    model = convert_model_to_bitnet(tiny_model("llama"), calibrate=False)
    with_norm = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, BitLinear) and m.sub_norm is not None}
    assert with_norm == {"o_proj", "down_proj"}


def test_calibrated_subln_is_closer_than_unit_gain():
    model = tiny_model("llama")
    x = torch.randint(1, 128, (4, 32))
    with torch.no_grad():
        reference = model(x).logits
        unit = convert_model_to_bitnet(copy.deepcopy(model), quant_lambda=0,
                                       calibrate=False)(x).logits
        calibrated = convert_model_to_bitnet(
            copy.deepcopy(model), quant_lambda=0, calibration_batches=[{"input_ids": x}]
        )(x).logits
    assert (calibrated - reference).pow(2).mean() < (unit - reference).pow(2).mean()


def test_calibration_gain_is_least_squares_solution():
    # one linear, two tokens: x1 = [1, 1] (rms 1), x2 = [2, 0] (rms sqrt 2)
    # u1 = [1, 1], u2 = [sqrt2, 0]; g_0 = (1*1 + 2*sqrt2) / (1 + 2) ; g_1 = (1*1 + 0) / (1 + 0) = 1
    from wrinklefree.convert import calibrate_subln

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.o_proj = torch.nn.Linear(2, 2, bias=False)

        def forward(self, input_ids, use_cache=False):
            return self.o_proj(input_ids)

    model = convert_model_to_bitnet(One(), quant_lambda=0, calibrate=False)
    model.o_proj.sub_norm.eps = 0.0
    calibrate_subln(model, [{"input_ids": torch.tensor([[1.0, 1.0], [2.0, 0.0]])}])
    expected = torch.tensor([(1 + 2 * 2**0.5) / 3, 1.0])
    assert torch.allclose(model.o_proj.sub_norm.weight, expected, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_save_load_roundtrip(arch, tmp_path):
    model = convert_model_to_bitnet(tiny_model(arch), quant_lambda=0.7, calibrate=False)
    with torch.no_grad():
        for m in model.modules():  # make SubLN gains non-trivial so loading them is tested
            if isinstance(m, BitLinear) and m.sub_norm is not None:
                m.sub_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["bitnet"]
    assert saved["insert_subln"] is True and saved["quant_lambda"] == 0.7
    loaded = load_bitnet(tmp_path)
    x = torch.randint(1, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_fp_layers_keep_whole_decoder_layers_in_full_precision(tmp_path):
    model = tiny_model("llama", num_hidden_layers=3)
    n = model.config.num_hidden_layers
    source = copy.deepcopy(model)
    convert_model_to_bitnet(model, fp_layers=[0, -1], calibrate=False)
    kept = {0, n - 1}
    for i, layer in enumerate(model.model.layers):
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        if i in kept:  # the teacher's layer itself: plain linears, same weights, no SubLN
            assert not any(isinstance(m, BitLinear) for m in linears)
            for (name, p), q in zip(layer.named_parameters(), source.model.layers[i].parameters(),
                                    strict=True):
                assert torch.equal(p, q), name
        else:
            assert linears and all(isinstance(m, BitLinear) for m in linears)
    model.save_pretrained(tmp_path)
    loaded = load_bitnet(tmp_path)
    assert loaded.config.bitnet["fp_layers"] == [0, -1]
    x = torch.randint(1, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_fp_layers_covering_every_layer_are_refused_with_the_fix():
    with pytest.raises(UserInputError, match=r"keeps all 2 decoder layers.*fp_layers=\[\]"):
        convert_model_to_bitnet(tiny_model("llama"), fp_layers=[0, 1, -1], calibrate=False)


@pytest.mark.parametrize("bad", [[2], [-3]])
def test_fp_layers_outside_the_model_are_refused_with_the_range(bad):
    n = tiny_model("llama").config.num_hidden_layers
    assert n == 2
    with pytest.raises(UserInputError, match=rf"fp_layers \[{bad[0]}\].*\[-2, 1\]"):
        convert_model_to_bitnet(tiny_model("llama"), fp_layers=bad, calibrate=False)


def test_load_rejects_plain_checkpoint(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a wrinklefree BitNet checkpoint"):
        load_bitnet(tmp_path)


def test_load_rejects_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_bitnet(tmp_path)
    convert_model_to_bitnet(tiny_model("llama"), calibrate=False).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="model.safetensors is damaged .*write the model"):
        load_bitnet(tmp_path)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="quant_lamda"):
        BitNetConfig.from_dict({"quant_lamda": 1.0})


def test_unsupported_architecture_is_named():
    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    with pytest.raises(TypeError, match="GPT2LMHeadModel.*Conv1D"):
        convert_model_to_bitnet(transformers.GPT2LMHeadModel(config))


def test_missing_subln_targets_are_named():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="out_proj"):
        convert_model_to_bitnet(model, subln_targets=["out_proj"])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_documents_do_not_attend_to_each_other(arch):
    model = convert_model_to_bitnet(tiny_model(arch), calibrate=False)  # fully ternary, SubLN on
    model.double()  # other lengths, other summation orders: float64 keeps int8 rounding ties away
    docs = [torch.randint(1, 128, (n,)) for n in (5, 9, 6)]
    window = torch.cat(docs)[None]  # (1, 20)
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = model(input_ids=window, position_ids=position_ids, use_cache=False).logits
        start = 0
        for doc in docs:
            alone = model(input_ids=doc[None], use_cache=False).logits
            assert (packed[0, start : start + len(doc)] - alone[0]).abs().max() < 1e-9
            start += len(doc)


def test_sequence_classification_learns_a_toy_task():
    torch.manual_seed(0)
    model = convert_model_to_bitnet(tiny_model("llama", head="classification"), calibrate=False)
    model.train()
    # label = whether token 7 appears in the sequence
    x = torch.randint(8, 128, (32, 10))
    y = torch.randint(0, 2, (32,))
    x[y == 1, 3] = 7
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(input_ids=x, labels=y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    accuracy = (model(input_ids=x).logits.argmax(-1) == y).float().mean()
    assert losses[-1] < 0.5 * losses[0] and accuracy > 0.9


# ---------------------------------------------------------------- SubLN calibration by default


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_subln_without_batches_or_tokenizer_is_refused_before_any_change():
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="calibration_batches=.*calibrate=False"):
        convert_model_to_bitnet(model)
    assert not any(isinstance(m, BitLinear) for m in model.modules())  # untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_subln_calibrates_on_builtin_text_with_the_models_tokenizer(tmp_path):
    from transformers import GPT2Tokenizer

    from wrinklefree import assets

    tokenizer = GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab"))
    tokenizer.save_pretrained(tmp_path / "src")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "src")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    convert_model_to_bitnet(model, quant_lambda=0)  # finds the tokenizer beside the weights
    gains = [m.sub_norm.weight for m in model.modules()
             if isinstance(m, BitLinear) and m.sub_norm is not None]
    assert gains and all(not torch.allclose(g, torch.ones_like(g)) for g in gains)

    explicit = tiny_model("llama", vocab_size=len(tokenizer))
    convert_model_to_bitnet(explicit, quant_lambda=0, tokenizer=tokenizer)
    x = torch.randint(0, len(tokenizer), (1, 12))
    torch.testing.assert_close(_logits(explicit, x), _logits(model, x))


def test_explicit_batches_and_explicit_opt_out():
    x = torch.randint(0, 128, (2, 16))
    calibrated = convert_model_to_bitnet(tiny_model("llama"), calibration_batches=[
        {"input_ids": x}])
    unit = convert_model_to_bitnet(tiny_model("llama"), calibrate=False)
    norms = [m.sub_norm.weight for m in unit.modules()
             if isinstance(m, BitLinear) and m.sub_norm is not None]
    assert all(torch.equal(g, torch.ones_like(g)) for g in norms)
    assert any(not torch.equal(m.sub_norm.weight, torch.ones_like(m.sub_norm.weight))
               for m in calibrated.modules() if isinstance(m, BitLinear) and m.sub_norm)
    with pytest.raises(ValueError, match="contradict"):
        convert_model_to_bitnet(tiny_model("llama"), calibrate=False,
                                calibration_batches=[{"input_ids": x}])
    convert_model_to_bitnet(tiny_model("llama"), insert_subln=False)  # nothing to calibrate


@pytest.mark.parametrize("value", [-3, 1.5])
def test_quant_lambda_outside_unit_interval_is_refused_at_load(tmp_path, value):
    convert_model_to_bitnet(tiny_model("llama"), calibrate=False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["bitnet"]["quant_lambda"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config\.json.*quant_lambda={value} is out of range: "
                       r"it must be a number in \[0, 1\]"):
        load_bitnet(tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        BitNetConfig(quant_lambda=value)


def test_fp_layers_subln_gives_full_precision_layers_a_calibrated_subln(tmp_path):
    from wrinklefree.nn import SubLNLinear

    model = tiny_model("llama", num_hidden_layers=3)
    source = copy.deepcopy(model)
    batches = [{"input_ids": torch.randint(1, 128, (2, 16))}]
    convert_model_to_bitnet(model, fp_layers=[0], fp_layers_subln=True,
                            calibration_batches=batches)
    layer = model.model.layers[0]
    for path in ("self_attn.o_proj", "mlp.down_proj"):
        fp = layer.get_submodule(path)
        assert type(fp) is SubLNLinear and not isinstance(fp, BitLinear)
        assert torch.equal(fp.weight, source.model.layers[0].get_submodule(path).weight)
        assert not torch.allclose(fp.sub_norm.weight, torch.ones_like(fp.sub_norm.weight))
    assert type(layer.self_attn.q_proj) is torch.nn.Linear  # only the SubLN targets change
    model.save_pretrained(tmp_path)
    loaded = load_bitnet(tmp_path)
    assert loaded.config.bitnet["fp_layers_subln"] is True
    assert type(loaded.model.layers[0].mlp.down_proj) is SubLNLinear
    x = torch.randint(1, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_subln_linear_by_hand():
    from wrinklefree.nn import SubLNLinear

    linear = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0]]))
    layer = SubLNLinear.from_linear(linear, subln_eps=0.0)
    with torch.no_grad():
        layer.sub_norm.weight.copy_(torch.tensor([2.0, 1.0]))
        y = layer(torch.tensor([[3.0, 4.0]]))
    # rms(3, 4) = r = sqrt(12.5); gained (2 * 3, 1 * 4) / r; y = 1 * 6 / r + 2 * 4 / r = 14 / r
    assert y.item() == pytest.approx(14 / 12.5 ** 0.5, rel=1e-6)


def test_fp_layers_subln_needs_insert_subln():
    with pytest.raises(UserInputError, match="fp_layers_subln=true needs insert_subln=true"):
        convert_model_to_bitnet(tiny_model("llama"), fp_layers=[0], fp_layers_subln=True,
                                insert_subln=False, calibrate=False)
