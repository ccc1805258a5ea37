import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounter

from wrinklefree.nn import BitLinear, SubLN


def test_subln_hand_values():
    norm = SubLN(2, eps=0.0)
    x = torch.tensor([[3.0, 4.0]])
    # rms = sqrt((9 + 16) / 2) = sqrt(12.5) = 3.5355
    assert torch.allclose(norm(x), torch.tensor([[3 / 12.5**0.5, 4 / 12.5**0.5]]))


def test_bitlinear_lambda0_equals_linear():
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    layer = BitLinear.from_linear(linear, quant_lambda=0.0)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), linear(x))
    assert layer.weight is linear.weight, "conversion shares tensors, no copy"


def test_bitlinear_ternary_forward_hand_values():
    layer = BitLinear(2, 1, bias=False, quantize_activations=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.5]]))
    # scale = 1.0; codes = round([0.5, -1.5]) = [0, -2] -> clip -> [0, -1]; y = -x1
    y = layer(torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(y, torch.tensor([[-3.0]]))


def test_bitlinear_gradient_flows_through_ste():
    torch.manual_seed(0)
    layer = BitLinear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bitlinear_rejects_unknown_weight_quant():
    with pytest.raises(ValueError, match="nope"):
        BitLinear(4, 4, weight_quant="nope")


@pytest.mark.parametrize("lam", [0.3, 1.0])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_ste_matches_textbook_bitlinear(lam, bias):
    """Values and gradients equal F.linear(ste_mix(x), ste_mix(W)) written out op by op."""
    from wrinklefree.quant import absmax_activation_quant, ste_mix, ternary_weight_quant

    torch.manual_seed(0)
    layer = BitLinear(16, 8, bias=bias, quant_lambda=lam)
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = layer(x)
    (y * torch.arange(8.0)).sum().backward()
    fused = (y.detach(), x.grad.clone(), layer.weight.grad.clone())

    x.grad, layer.weight.grad = None, None
    w_ref = ste_mix(layer.weight, ternary_weight_quant(layer.weight), lam)
    x_ref = ste_mix(x, absmax_activation_quant(x), lam)
    y_ref = torch.nn.functional.linear(x_ref, w_ref, layer.bias)
    (y_ref * torch.arange(8.0)).sum().backward()
    assert torch.allclose(fused[0], y_ref, atol=1e-6)
    assert torch.allclose(fused[1], x.grad, atol=1e-6)
    assert torch.allclose(fused[2], layer.weight.grad, atol=1e-6)


def test_shared_input_is_quantized_once_and_gradients_add_up():
    torch.manual_seed(0)
    q, k = BitLinear(16, 8), BitLinear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    (q(x).sum() + k(x).sum()).backward()
    shared = x.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    q(x2).sum().backward()
    k(x2.detach().clone().requires_grad_(True)).sum().backward()  # separate inputs
    expected = x2.grad + (k.quantized_weight().detach().sum(0)).expand_as(x2)
    assert torch.allclose(shared, expected, atol=1e-5)


@torch.no_grad()
def test_quantized_weight_cache_follows_weight_updates():
    torch.manual_seed(0)
    layer = BitLinear(8, 4, bias=False, quantize_activations=False)
    x = torch.randn(2, 8)
    before = layer(x)
    assert layer._w_cache is not None  # inference (no grad) caches
    assert torch.equal(layer(x), before)
    layer.weight.mul_(-1)  # in-place update, as an optimizer step does
    assert torch.allclose(layer(x), -before)
    layer.quant_lambda = 0.0
    assert torch.allclose(layer(x), x @ layer.weight.T)


def test_cache_is_dropped_after_training_with_fused_adamw():
    # fused AdamW updates the weight without bumping its version counter: validation, then
    # training steps, then a final evaluation must not see the validation-time weight
    torch.manual_seed(0)
    layer = BitLinear(8, 4, bias=False, quantize_activations=False)
    x = torch.randn(2, 8)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    layer.eval()
    with torch.no_grad():
        stale = layer(x)  # validation: caches Q(W)
    layer.train()
    for _ in range(3):
        layer(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    layer.eval()
    with torch.no_grad():
        fresh = x @ layer.quantized_weight().T
        assert not torch.allclose(fresh, stale)
        torch.testing.assert_close(layer(x), fresh)  # final evaluation: the trained weight


def test_bf16_autocast_backward():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def _tiny_converted(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    from wrinklefree.convert import convert_model_to_bitnet

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = convert_model_to_bitnet(LlamaForCausalLM(config), calibrate=False).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sub_norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def test_inference_mode_forward_equals_no_grad_forward():
    """Inference tensors have no version counter: the activation cache must not read it."""
    model = _tiny_converted().eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
    with torch.inference_mode():
        got = model(ids).logits
    assert torch.equal(got, expected)


def test_no_input_is_kept_alive_after_the_forward():
    import gc
    import weakref

    from wrinklefree.nn import bitlinear

    q, k = BitLinear(16, 8), BitLinear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    (q(x) + k(x)).sum().backward()
    with torch.no_grad():
        q(x)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None, "the activation cache keeps the last input alive"
    assert len(bitlinear._ACTIVATION_CACHE) == 0


def test_an_in_place_change_of_the_input_is_quantized_afresh():
    q = BitLinear(16, 8, bias=False)
    x = torch.randn(3, 16)
    with torch.no_grad():
        before = q(x)
        x.mul_(2.0)  # a new version of the same tensor object
        after = q(x)
    torch.testing.assert_close(after, 2 * before)


def test_loss_and_gradients_equal_the_textbook_model():
    """The shared-input cache changes no value: every BitLinear written out op by op instead
    (F.linear(ste_mix(x), ste_mix(W)), each projection quantizing its own input), in float64."""
    import torch.nn.functional as F

    from wrinklefree.quant import WEIGHT_QUANTIZERS, absmax_activation_quant, ste_mix

    def textbook(self, x):
        x = self.transform_input(x)
        lam = self.quant_lambda
        w = ste_mix(self.weight, WEIGHT_QUANTIZERS[self.weight_quant](self.weight), lam)
        return F.linear(ste_mix(x, absmax_activation_quant(x), lam), w, self.bias)

    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    results = []
    for forward in (BitLinear.forward, textbook):
        model = _tiny_converted(torch.float64)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(BitLinear, "forward", forward)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, grads), (ref_loss, ref_grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=1e-10, msg=name)


def test_compiles_into_one_graph_with_the_same_values():
    q, k = BitLinear(16, 8), BitLinear(16, 8, subln=True)

    def f(x):
        return q(x) + k(x)

    x = torch.randn(3, 16, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # no graph break
    y = compiled(x)
    y.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    f(x).sum().backward()
    torch.testing.assert_close(y, f(x))
    torch.testing.assert_close(grad, x.grad)


def test_compiled_inference_skips_the_weight_cache():
    # validation / evaluation of a compiled student runs without gradients: the eager weight cache
    # (keyed on data_ptr and version) would break the graph and recompile once per layer
    q, k = BitLinear(16, 8), BitLinear(16, 8, subln=True)

    def f(x):
        return q(x) + k(x)

    counter = CompileCounter()
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    x = torch.randn(3, 16)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), f(x))
    assert counter.frame_count == 1  # compiled once, no recompilation on later calls


def test_subln_gradient_hand_values():
    # x = [3, 4], g = [1, 1], eps = 0, dL/dy = [1, 0]: r = 1/sqrt(12.5), x̂ = [3r, 4r]
    # dL/dx = r·([1, 0] - x̂·mean([1, 0]·x̂)) = r·([1, 0] - [3r, 4r]·1.5r) = r·[0.64, -0.48]
    # (r² = 0.08); dL/dg = [1, 0]·x̂ = [3r, 0]
    norm = SubLN(2, eps=0.0)
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    (norm(x) * torch.tensor([1.0, 0.0])).sum().backward()
    r = 12.5**-0.5
    torch.testing.assert_close(x.grad, torch.tensor([[0.64 * r, -0.48 * r]]))
    torch.testing.assert_close(norm.weight.grad, torch.tensor([3 * r, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_subln_backward_equals_autograd_of_the_formula(dtype):
    torch.manual_seed(0)
    norm = SubLN(24).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 24, dtype=dtype, requires_grad=True)
    grad_y = torch.randn(3, 5, 24, dtype=dtype)
    y = norm(x)
    y.backward(grad_y)
    got = (y.detach(), x.grad.clone(), norm.weight.grad.clone())
    x.grad, norm.weight.grad = None, None
    xf = x.float()  # the same formula, differentiated by autograd
    ref = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).to(dtype)
    ref.backward(grad_y)
    assert torch.equal(got[0], ref.detach())
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got[1], x.grad, **tol)
    torch.testing.assert_close(got[2], norm.weight.grad, **tol)
