"""PackedBitLinear: inference-only BitLinear whose ternary weight stays 2-bit packed in memory.

A trained BitLinear at lambda = 1 multiplies by W_q = codes * scale with codes in {-1, 0, 1}
(BitNet b1.58, arXiv 2402.17764, Eq. 1-3). Storing the codes 4 per byte (``export.pack``) plus one
scale cuts the linear weights from 32 bits to 2 bits each; the forward pass decodes one layer's
bytes at a time, so no full-size weight is ever kept.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.export.pack import check_exportable, pack_ternary_2bit, ternary_state
from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.subln import SubLN
from wrinklefree.quant import absmax_activation_quant


class PackedBitLinear(nn.Module):
    """y = scale * (Q_a(norm(x)) @ codes^T) + b, computed from the 2-bit storage on every call.

    Same function as a BitLinear at lambda = 1 (the per-tensor or per-channel scale is applied
    after the matmul, which is exact algebra: Q_a(x) @ (codes * s)^T = s * (Q_a(x) @ codes^T)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        packed: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        sub_norm: SubLN | None = None,
        quantize_activations: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("packed", packed)  # (out, ceil(in / 4)) uint8
        self.register_buffer("scale", scale.float())  # () per tensor or (out, 1) per channel
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        self.sub_norm = sub_norm
        self.quantize_activations = quantize_activations

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedBitLinear:
        """Pack a fully quantized BitLinear (lambda = 1); its SubLN and bias are kept."""
        if layer.quant_lambda != 1.0:
            raise ValueError(
                f"cannot pack a BitLinear at lambda={layer.quant_lambda:g}: only the fully "
                "ternary function (lambda = 1) has 2-bit weights; finish the warm-up or call "
                "wrinklefree.quant.set_quant_lambda(model, 1.0) first"
            )
        codes, scale = ternary_state(layer)
        return cls(
            layer.in_features,
            layer.out_features,
            pack_ternary_2bit(codes),
            scale,
            layer.bias,
            sub_norm=layer.sub_norm,
            quantize_activations=layer.quantize_activations,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        if self.quantize_activations:
            x = absmax_activation_quant(x)
        # Byte j of a row holds d_k = code + 1 of element 4j + k in bits 2k..2k+1 (the layout of
        # export.pack.pack_ternary_2bit), so x . codes = sum_k x[4j + k] . d_k[j] - sum(x): four
        # matmuls on bit planes read straight from the bytes, ~3x faster than unpacking the codes.
        pad = 4 * self.packed.shape[1] - self.in_features
        planes = F.pad(x, (0, pad)).unflatten(-1, (-1, 4))  # (..., in / 4, 4); pads hit x = 0
        y = -x.sum(-1, keepdim=True)  # (..., 1)
        for k in range(4):
            d_k = ((self.packed >> (2 * k)) & 3).to(x.dtype)  # (out, in / 4) in {0, 1, 2}
            y = y + F.linear(planes[..., k], d_k)  # (..., out)
        y = y * self.scale.reshape(-1).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        per = "channel" if self.scale.dim() else "tensor"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, packed=2-bit, scale=per-{per}, "
            f"act_quant={self.quantize_activations}"
        )


def pack_model(model: nn.Module) -> nn.Module:
    """Replace every BitLinear of ``model`` by a PackedBitLinear in place; returns the model.

    Raises ValueError (from :func:`wrinklefree.export.pack.check_exportable`) for an unconverted
    model, a layer below lambda = 1, or a variant that is not codes * scale (Haar, Hadamard, LRC).
    """
    for name, layer in check_exportable(model):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                PackedBitLinear.from_bitlinear(layer))
    return model


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model: ``linear`` (BitLinear weights or packed codes + scales) and
    ``total`` (every parameter and buffer, shared tensors such as tied embeddings counted once)."""
    linear = 0
    for m in model.modules():
        if isinstance(m, BitLinear):
            linear += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, PackedBitLinear):
            linear += sum(t.numel() * t.element_size() for t in (m.packed, m.scale))
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return {"linear": linear, "total": total}
