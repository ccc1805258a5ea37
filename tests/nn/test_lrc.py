"""Low-rank correction: rank rules, SVD init (Eckart–Young), the forward path, freezing."""

import math

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.nn import (
    BitLinear,
    BitLinearLRC,
    convert_bitlinear_to_lrc,
    freeze_model_except_lrc,
)
from wrinklefree.nn.lrc import resolve_lrc_rank


@pytest.mark.parametrize(
    ("rank", "n_in", "n_out", "expected"),
    [(0.1, 576, 1536, 58), (0.1, 576, 192, 19), (1.0, 8, 6, 6), (0.01, 8, 6, 1),
     (64, 576, 192, 64), (1000, 576, 192, 192), (1, 8, 6, 1)],
)
def test_rank_fraction_or_absolute(rank, n_in, n_out, expected):
    assert resolve_lrc_rank(rank, n_in, n_out) == expected


@pytest.mark.parametrize("rank", [0.0, 1.5, -0.1, 0])
def test_bad_rank_is_rejected(rank):
    with pytest.raises(ValueError, match="rank"):
        resolve_lrc_rank(rank, 8, 8)
    with pytest.raises(TypeError):
        resolve_lrc_rank(True, 8, 8)


def _layer_with(weight: torch.Tensor, **kwargs) -> BitLinear:
    layer = BitLinear(weight.shape[1], weight.shape[0], bias=False, **kwargs)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_svd_init_hand_case():
    # W = diag(7, 3): gamma = mean|W| = 2.5, Q(W) = diag(2.5, 2.5), W - Q(W) = diag(4.5, 0.5).
    # The best rank-1 correction is diag(4.5, 0): error 0.5 instead of sqrt(4.5² + 0.5²).
    w = torch.tensor([[7.0, 0.0], [0.0, 3.0]])
    lrc = BitLinearLRC.from_bitlinear(_layer_with(w), rank=1)
    u, v = lrc.lrc_U.detach(), lrc.lrc_V.detach()
    torch.testing.assert_close(u @ v.T, torch.tensor([[4.5, 0.0], [0.0, 0.0]]))
    q = torch.full((2,), 2.5).diag()
    assert torch.linalg.norm(w - q).item() == pytest.approx(math.sqrt(20.5))
    assert torch.linalg.norm(w - (q + u @ v.T)).item() == pytest.approx(0.5, abs=1e-6)
    # the split is balanced: U = V = [√4.5, 0] up to a common sign
    torch.testing.assert_close(u.abs(), torch.tensor([[math.sqrt(4.5)], [0.0]]))


@pytest.mark.parametrize("weight_quant", ["absmean", "absmean_channel", "haar"])
def test_svd_init_reaches_the_eckart_young_error(weight_quant):
    torch.manual_seed(0)
    layer = _layer_with(torch.randn(16, 24), weight_quant=weight_quant)
    lrc = BitLinearLRC.from_bitlinear(layer, rank=4)
    w = layer.weight.detach()
    residual = w - lrc.quantized_weight().detach()  # lambda = 1: Q(W)
    sigma = torch.linalg.svdvals(residual)
    err = torch.linalg.norm(residual - (lrc.lrc_U @ lrc.lrc_V.T).detach()).item()
    assert err == pytest.approx(sigma[4:].pow(2).sum().sqrt().item(), rel=1e-4)
    assert err < torch.linalg.norm(residual).item()


def test_svd_init_ignores_the_current_lambda():
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    a = BitLinearLRC.from_bitlinear(_layer_with(w, quant_lambda=0.0), rank=2)
    b = BitLinearLRC.from_bitlinear(_layer_with(w, quant_lambda=1.0), rank=2)
    torch.testing.assert_close(a.lrc_U @ a.lrc_V.T, b.lrc_U @ b.lrc_V.T)
    assert (a.lrc_U @ a.lrc_V.T).abs().max() > 0


def _hand_lrc_layer(quant_lambda: float = 1.0) -> BitLinearLRC:
    """W = 0 (the ternary part is 0), U = [[1]], V = [[1], [2]]."""
    layer = BitLinearLRC(2, 1, bias=False, rank=1, quant_lambda=quant_lambda)
    with torch.no_grad():
        layer.weight.zero_()
        layer.lrc_U.fill_(1.0)
        layer.lrc_V.copy_(torch.tensor([[1.0], [2.0]]))
    return layer


def test_low_rank_path_uses_unquantized_activations():
    # y = 0.3·1 + 0.1·2 = 0.5 exactly.
    # (With int8 absmax activations 0.1 would become 42/127·0.3 and y = 0.4984.)
    layer = _hand_lrc_layer()
    torch.testing.assert_close(layer(torch.tensor([[0.3, 0.1]])), torch.tensor([[0.5]]))


def test_forward_is_bitlinear_plus_low_rank_after_subln():
    torch.manual_seed(0)
    base = BitLinear(8, 6, subln=True)
    with torch.no_grad():
        base.sub_norm.weight.uniform_(0.5, 2.0)
    lrc = BitLinearLRC.from_bitlinear(base, rank=3)
    assert lrc.weight is base.weight and lrc.sub_norm is base.sub_norm
    x = torch.randn(2, 5, 8)
    h = base.sub_norm(x)
    torch.testing.assert_close(lrc(x), base(x) + h @ lrc.lrc_V @ lrc.lrc_U.T)


def test_correction_is_scaled_by_lambda_like_the_error_it_corrects():
    # x = [0.3, 0.1]: U·Vᵀ·x = 0.5; at lambda 0.25 it is 0.125
    layer = _hand_lrc_layer(quant_lambda=0.25)
    torch.testing.assert_close(layer(torch.tensor([[0.3, 0.1]])), torch.tensor([[0.125]]))


def test_svd_initialised_layer_is_exactly_full_precision_at_lambda_zero():
    torch.manual_seed(0)
    linear = nn.Linear(8, 6)
    lrc = BitLinearLRC.from_bitlinear(BitLinear.from_linear(linear, quant_lambda=0.0), rank=3)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(lrc(x), linear(x))  # lambda warm-up starts from the source


def test_kaiming_init_starts_as_bitlinear_and_trains():
    torch.manual_seed(0)
    base = BitLinear(8, 6)
    lrc = BitLinearLRC.from_bitlinear(base, rank=2, init="kaiming")
    assert lrc.lrc_U.abs().max() == 0 and lrc.lrc_V.abs().max() > 0
    x = torch.randn(4, 8)
    torch.testing.assert_close(lrc(x), base(x))
    lrc(x).pow(2).sum().backward()
    assert lrc.lrc_U.grad.abs().max() > 0


@pytest.mark.parametrize("init", ["zeros", "zero"])
def test_zero_init_is_refused(init):
    with pytest.raises(ValueError, match="never trains"):
        BitLinearLRC.from_bitlinear(BitLinear(8, 6), rank=2, init=init)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="svd_residual"):
        BitLinearLRC.from_bitlinear(BitLinear(8, 6), rank=2, init="orthogonal")


def test_svd_init_of_an_already_ternary_weight_is_refused():
    w = torch.tensor([[1.0, -1.0], [1.0, 1.0]])  # gamma = 1, Q(W) = W: nothing to correct
    with pytest.raises(ValueError, match="init='kaiming'"):
        BitLinearLRC.from_bitlinear(_layer_with(w), rank=1)


def _tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


def test_convert_and_freeze_train_only_the_factors():
    model = convert_model_to_bitnet(_tiny_llama(), insert_subln=False)
    convert_bitlinear_to_lrc(model, rank=0.25)
    lrc_layers = [m for m in model.modules() if isinstance(m, BitLinearLRC)]
    assert len(lrc_layers) == 2 * 7
    assert model.config.bitnet["lrc_rank"] == 0.25
    assert model.get_submodule("model.layers.0.self_attn.k_proj").lrc_rank == 8  # 0.25·min(64, 32)
    params = freeze_model_except_lrc(model)
    assert len(params) == 2 * len(lrc_layers)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    batch = torch.randint(0, 128, (2, 8))
    model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in params)
    assert model.lm_head.weight.grad is None


def test_errors_without_bitlinear_or_lrc():
    with pytest.raises(TypeError, match="convert_model_to_bitnet"):
        convert_bitlinear_to_lrc(_tiny_llama())
    with pytest.raises(ValueError, match="no LRC layers"):
        freeze_model_except_lrc(convert_model_to_bitnet(_tiny_llama(), insert_subln=False))
