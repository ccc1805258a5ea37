"""PackedBitLinear: inference-only BitLinear whose ternary weight is kept as integer codes.

A trained BitLinear at lambda = 1 multiplies by W_q = codes * scale with codes in {-1, 0, 1}
(BitNet b1.58, arXiv 2402.17764, Eq. 1-3). Two kernels:

- ``int8`` (default, the fast one): codes as int8 (8 bits per weight, 4x less than fp32) and the
  activations quantized to int8 per token exactly as BitLinear does (BitNet's W1.58A8). The
  matmul is oneDNN's u8 x s8 -> s32 GEMM on a weight pre-packed once at load
  (``torch.ops.onednn.qlinear_prepack`` / ``qlinear_pointwise``, the kernels PyTorch's x86
  quantization uses; activations shifted by +128 to uint8 with zero point 128), else
  ``torch._int_mm`` (which re-lays the weight out on every call: ~2x slower on cold weights).
  Integer accumulation is exact (|w| <= 1 also rules out the int16 saturation of AVX2's
  u8 x s8 pair sums), so the only rounding is the final rescale.
- ``2bit`` (the smallest): codes 4 per byte (``quant.packing``, 2 bits per weight, 16x less) with a
  bit-plane matmul in float; slower than fp32 (every call decodes the bytes), and the only kernel
  for layers without activation quantization.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.subln import SubLN
from wrinklefree.nn.surgery import replace_modules
from wrinklefree.nn.ternary import check_exportable, ternary_state
from wrinklefree.quant import absmax_activation_quant
from wrinklefree.quant.packing import pack_ternary_2bit
from wrinklefree.quant.ternary import EPS

KERNELS = ("int8", "2bit")


def onednn_prepack(codes: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's pre-packed layout of int8 codes (out, in), or None where the op is missing or
    disagrees with the exact integer product on a probe (then ``torch._int_mm`` is used)."""
    try:
        packed = torch.ops.onednn.qlinear_prepack(codes, [1, codes.shape[1]])
        probe = torch.randint(-128, 128, (3, codes.shape[1]), dtype=torch.int8,
                              generator=torch.Generator().manual_seed(0))
        ones, zeros = _unit_scales(codes.shape[0])
        got = _onednn_matmul((probe.to(torch.int16) + 128).to(torch.uint8), packed, ones, zeros)
    except (RuntimeError, AttributeError):
        return None
    return packed if torch.equal(got, (probe.int() @ codes.int().t()).float()) else None


def _unit_scales(out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output weight scales of 1 and zero points of 0 for qlinear_pointwise."""
    return torch.ones(out_features), torch.zeros(out_features, dtype=torch.int64)


def _onednn_matmul(xu: torch.Tensor, packed: torch.Tensor, ones: torch.Tensor,
                   zeros: torch.Tensor) -> torch.Tensor:
    """Exact uint8 (tokens, in) = int8 codes + 128 (zero point 128) x packed codes -> float32
    (tokens, out) with unit scales: the int32 sum itself (|sum| <= 128 * in < 2^24: exact)."""
    return torch.ops.onednn.qlinear_pointwise(xu, 1.0, 128, packed, ones, zeros, None, 1.0, 0,
                                              torch.float32, "none", [None], "")


# q/k/v (and gate/up) read the same input tensor: quantize it once. Holds that one tensor.
_shared_input: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None


def _uint8_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8_activation(x) shifted by +128 to uint8 (oneDNN's u8 input), reused for the same
    unchanged tensor (same object and version counter; inference tensors are not cached)."""
    global _shared_input
    cached = _shared_input
    if not x.is_inference():
        if cached is not None and cached[0] is x and cached[1] == x._version:
            return cached[2], cached[3]
    xf = x.float()
    absmax = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # (..., 1)
    scale = 127 / absmax.clamp(min=EPS)
    xu = (xf * scale).round_().clamp_(-128, 127).add_(128).to(torch.uint8)
    if not x.is_inference():
        _shared_input = (x, x._version, xu, scale)
    return xu, scale


def int8_activation(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes and scale (BitNet, arXiv 2310.11453, Eq. 4): q = RoundClip(
    x * s, -128, 127) with s = 127 / max|x|, so q / s is ``absmax_activation_quant(x)``, computed
    with the same float32 operations. -> (int8 (..., in), float32 (..., 1))."""
    xf = x.float()
    absmax = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # (..., 1)
    scale = 127 / absmax.clamp(min=eps)
    return (xf * scale).round_().clamp_(-128, 127).to(torch.int8), scale


class PackedBitLinear(nn.Module):
    """y = scale * (Q_a(norm(x)) @ codes^T) + b, computed from integer codes on every call.

    Same function as a BitLinear at lambda = 1 (the per-tensor or per-channel scale is applied
    after the matmul, which is exact algebra: Q_a(x) @ (codes * s)^T = s * (Q_a(x) @ codes^T)).
    ``packed`` holds the codes: int8 (in, out) for the ``int8`` kernel (the layout
    ``torch._int_mm`` reads), uint8 (out, ceil(in / 4)) 2-bit for ``2bit``.
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
        kernel: str = "2bit",
        onednn: bool = True,
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel '{kernel}'; choose one of {KERNELS}")
        if kernel == "int8" and not quantize_activations:
            raise ValueError("the int8 kernel needs int8 activations (quantize_activations=True); "
                             "use kernel='2bit' for this layer")
        self.in_features = in_features
        self.out_features = out_features
        self.kernel = kernel
        self.record: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # tests: int8 inputs
        use_onednn = kernel == "int8" and onednn
        self.onednn = onednn_prepack(packed.t().contiguous()) if use_onednn else None
        self._unit = _unit_scales(out_features) if self.onednn is not None else None
        # int8 (in, out) or 2-bit uint8 (out, in / 4); with oneDNN only its packed copy is kept
        # (an opaque tensor: not a buffer, so not in state_dict; rebuild with pack_model)
        self.register_buffer("packed", None if self.onednn is not None else packed)
        self.register_buffer("scale", scale.float())  # () per tensor or (out, 1) per channel
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        self.sub_norm = sub_norm
        self.quantize_activations = quantize_activations

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, kernel: str = "2bit", *,
                       onednn: bool = True) -> PackedBitLinear:
        """Pack a fully quantized BitLinear (lambda = 1); its SubLN and bias are kept.
        ``onednn=False`` keeps the int8 kernel on ``torch._int_mm`` (traceable by torch.compile)."""
        if layer.quant_lambda != 1.0:
            raise ValueError(
                f"cannot pack a BitLinear at lambda={layer.quant_lambda:g}: only the fully "
                "ternary function (lambda = 1) has 2-bit weights; finish the warm-up or call "
                "wrinklefree.set_quant_lambda(model, 1.0) first"
            )
        codes, scale = ternary_state(layer)
        packed = codes.t().contiguous() if kernel == "int8" else pack_ternary_2bit(codes)
        return cls(
            layer.in_features,
            layer.out_features,
            packed,
            scale,
            layer.bias,
            sub_norm=layer.sub_norm,
            quantize_activations=layer.quantize_activations,
            kernel=kernel,
            onednn=onednn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        if self.kernel == "int8":
            return self._forward_int8(x)
        if self.quantize_activations:
            x = absmax_activation_quant(x)
        # Byte j of a row holds d_k = code + 1 of element 4j + k in bits 2k..2k+1 (the layout of
        # quant.packing.pack_ternary_2bit), so x . codes = sum_k x[4j + k] . d_k[j] - sum(x): four
        # matmuls on bit planes read straight from the bytes, ~3x faster than unpacking the codes.
        pad = 4 * self.packed.shape[1] - self.in_features
        planes = F.pad(x, (0, pad)).unflatten(-1, (-1, 4))  # (..., in / 4, 4); pads hit x = 0
        y = -x.sum(-1, keepdim=True)  # (..., 1)
        for k in range(4):
            d_k = ((self.packed >> (2 * k)) & 3).to(x.dtype)  # (out, in / 4) in {0, 1, 2}
            y = y + F.linear(planes[..., k], d_k)  # (..., out)
        y = y * self.scale.reshape(-1).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        """W1.58A8: int8 codes x int8 activations summed exactly in int32 (|sum| <= 128 * in),
        then one rescale by scale / s_x."""
        if self.onednn is not None:
            xu, s_x = _uint8_activation(x)  # (..., in) uint8 = int8 codes + 128, (..., 1)
            acc = _onednn_matmul(xu.reshape(-1, self.in_features), self.onednn, *self._unit)
            if self.record is not None:
                self.record.append(((xu.to(torch.int16) - 128).to(torch.int8), s_x))
        else:
            q, s_x = int8_activation(x)  # (..., in) int8, (..., 1)
            acc = torch._int_mm(q.reshape(-1, self.in_features), self.packed)  # int32
            if self.record is not None:
                self.record.append((q, s_x))
        y = acc.view(*x.shape[:-1], self.out_features) * (self.scale.reshape(-1) / s_x)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        per = "channel" if self.scale.dim() else "tensor"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kernel={self.kernel}, scale=per-{per}, "
            f"act_quant={self.quantize_activations}"
        )


def pack_model(model: nn.Module, kernel: str = "int8", *, onednn: bool = True) -> nn.Module:
    """Replace every BitLinear of ``model`` by a PackedBitLinear in place; returns the model.

    ``kernel``: ``int8`` (fast; layers without activation quantization take ``2bit``) or
    ``2bit`` (smallest). See the module docstring. ``onednn=False``: int8 via ``torch._int_mm``,
    which ``torch.compile`` can trace (:mod:`wrinklefree.compiled`).

    Raises ValueError (from :func:`wrinklefree.nn.ternary.check_exportable`) for an unconverted
    model, a layer below lambda = 1, or a variant that is not codes * scale (Haar, Hadamard, LRC).
    """
    check_exportable(model)

    def pack(_: str, layer: BitLinear) -> PackedBitLinear:
        layer_kernel = kernel if layer.quantize_activations else "2bit"
        return PackedBitLinear.from_bitlinear(layer, layer_kernel, onednn=onednn)

    replace_modules(model, lambda _, m: isinstance(m, BitLinear), pack)
    return model


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model: ``linear`` (BitLinear weights or packed codes + scales) and
    ``total`` (every parameter and buffer, shared tensors such as tied embeddings counted once)."""
    linear = 0
    for m in model.modules():
        if isinstance(m, BitLinear):
            linear += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, PackedBitLinear):
            weights = (m.packed if m.onednn is None else m.onednn, m.scale)
            linear += sum(t.numel() * t.element_size() for t in weights)
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    opaque = [m.onednn for m in model.modules() if getattr(m, "onednn", None) is not None]
    return {"linear": linear, "total": total + sum(t.numel() * t.element_size() for t in opaque)}
