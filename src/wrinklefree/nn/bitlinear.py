"""BitLinear: a drop-in ``nn.Linear`` with BitNet b1.58 fake quantization.

State lives here (weight, bias, the optional SubLN, lambda); the math lives in
:mod:`wrinklefree.quant`. Subclassing ``nn.Linear`` keeps parameter names identical, so a
converted model loads the source state dict unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from wrinklefree.nn.subln import SubLN
from wrinklefree.quant import (
    WEIGHT_QUANTIZERS,
    absmax_activation_quant,
    fwht,
    hadamard_block_size,
    ste_linear,
    ste_mix,
)

# q/k/v (and gate/up) projections read the very same input tensor: quantize it once. The cache is
# keyed on the input tensor's identity and holds it weakly, so an entry lives exactly as long as
# that input (one decoder layer's forward for a normed hidden state) and never keeps it alive.
_ACTIVATION_CACHE = WeakIdKeyDictionary()


def _quantized_activation(x: torch.Tensor, lam: float) -> torch.Tensor:
    """ste_mix value of the int8 activation quantization of ``x``, reused for the same tensor.

    Reused only while ``x`` is unchanged (same version counter) and at the same lambda. Inference
    tensors have no version counter and a compiled graph deduplicates the work itself: both are
    quantized afresh on every call.
    """
    if torch.compiler.is_compiling() or x.is_inference():
        return ste_mix(x, absmax_activation_quant(x), lam)
    key = (x._version, lam)
    cached = _ACTIVATION_CACHE.get(x)
    if cached is not None and cached[0] == key:
        return cached[1]
    x_q = ste_mix(x, absmax_activation_quant(x), lam)
    _ACTIVATION_CACHE[x] = (key, x_q)
    return x_q


class BitLinear(nn.Linear):
    """y = Q_w(W) · Q_a(H · norm(x)) + b with a straight-through estimator.

    Args:
        quant_lambda: 0 = full precision, 1 = ternary; values between mix the two (warm-up).
        quantize_activations: per-token absmax int8 on the input (after the SubLN, if any).
        weight_quant: a key of :data:`wrinklefree.quant.WEIGHT_QUANTIZERS`.
        subln: insert an RMSNorm on the input (BitDistill's SubLN before o_proj / down_proj).
        hadamard: rotate the input with the normalised (block-diagonal) Hadamard H after the SubLN
            and before activation quantization (BitNet v2's H-BitLinear). The weight must hold
            W·Hᵀ; :func:`wrinklefree.convert.convert_model_to_bitnet` rotates it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quant_lambda: float = 1.0,
        quantize_activations: bool = True,
        weight_quant: str = "absmean",
        subln: bool = False,
        subln_eps: float = 1e-6,
        hadamard: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if weight_quant not in WEIGHT_QUANTIZERS:
            raise ValueError(
                f"unknown weight_quant '{weight_quant}'; choose one of {sorted(WEIGHT_QUANTIZERS)}"
            )
        self.quant_lambda = float(quant_lambda)
        self.quantize_activations = quantize_activations
        self.weight_quant = weight_quant
        self.sub_norm = SubLN(in_features, subln_eps, device=device, dtype=dtype) if subln else None
        self.hadamard = hadamard
        self.hadamard_block = hadamard_block_size(in_features) if hadamard else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> BitLinear:
        """A BitLinear sharing ``linear``'s weight and bias tensors (no copy)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            **kwargs,
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        if layer.sub_norm is not None:
            layer.sub_norm = SubLN(
                linear.in_features, layer.sub_norm.eps, device=linear.weight.device,
                dtype=linear.weight.dtype,
            )
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass sees it (fake-quantized and mixed by lambda)."""
        if self.quant_lambda == 0.0:
            return self.weight
        w_q = WEIGHT_QUANTIZERS[self.weight_quant](self.weight)
        return ste_mix(self.weight, w_q, self.quant_lambda)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., in)
        """The input the weight sees, before activation quantization: SubLN, then Hadamard."""
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        if self.hadamard:
            x = fwht(x, self.hadamard_block)
        return x

    def quantized_linear(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        """Q_w(W) · Q_a(x) + b on an already transformed input (straight-through gradients)."""
        if self.quant_lambda == 0.0:
            return F.linear(x, self.weight, self.bias)
        # cached only at eager inference: in training the cache would hold a full copy of every
        # weight between steps (+5.6 GB per GPU for a 1.7B student, unsharded under FSDP); a
        # compiled graph would guard on the cache key and recompile on every change
        cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        with torch.no_grad():
            x_q = x
            if self.quantize_activations:
                x_q = _quantized_activation(x, self.quant_lambda)
            w_q = self._cached_quantized_weight() if cache else self.quantized_weight()
        return ste_linear(x, self.weight, self.bias, x_q, w_q)

    def _cached_quantized_weight(self) -> torch.Tensor:
        """The quantized weight, recomputed only when the weight or lambda changed.

        In-place updates (``load_state_dict``, most optimizers) bump the weight's version
        counter, which invalidates the cache; it serves every decoding step at inference. Fused
        AdamW does *not* bump it, so :meth:`train` / ``eval()`` also drop the cache.
        """
        w = self.weight
        key = (w.data_ptr(), w._version, self.quant_lambda, self.weight_quant)
        cached = getattr(self, "_w_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.quantized_weight())
            self._w_cache = cached
        return cached[1]

    def train(self, mode: bool = True) -> BitLinear:
        # every switch (e.g. validation -> training -> final evaluation) forgets the cached
        # quantized weight: training may have changed the weight without bumping its version
        self._w_cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.quantized_linear(self.transform_input(x))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight_quant={self.weight_quant}, "
            f"act_quant={self.quantize_activations}, lambda={self.quant_lambda:g}"
            + (f", hadamard_block={self.hadamard_block}" if self.hadamard else "")
        )


def set_quant_lambda(model: nn.Module, value: float) -> int:
    """Set lambda on every BitLinear of ``model``; returns how many layers were set."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"quantization lambda must be in [0, 1], got {value}")
    count = 0
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.quant_lambda = float(value)
            count += 1
    return count
