"""Low-rank correction (LRC) of BitLinear layers (Scetbon & Hensman, arXiv 2412.07902).

A ternary layer keeps a small full-precision side path, y = BitLinear(x) + U·(Vᵀ·x), that acts
on the *unquantized* input (after the SubLN and Hadamard, if any), so it can absorb part of both
the weight and the activation quantization error. U is (out, r), V is (in, r).

Typical use (the ``lrc_calibration`` recipe): convert, add LRC, freeze everything but U and V,
and train them to match the full-precision teacher::

    convert_model_to_bitnet(model, lrc_rank=0.1)        # or convert_bitlinear_to_lrc(model, 0.1)
    params = freeze_model_except_lrc(model)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.surgery import bitnet_config_of, record_bitnet, replace_modules
from wrinklefree.quant import WEIGHT_QUANTIZERS

LRC_INITS = ("svd_residual", "kaiming")


def check_lrc_init(init: str) -> None:
    """Raise a ValueError for an init that is not one of :data:`LRC_INITS` (zeros included)."""
    if init in ("zero", "zeros"):
        raise ValueError(
            "LRC init 'zeros' is refused: with U = V = 0 both gradients are zero and the "
            "correction never trains; use 'svd_residual' (default) or 'kaiming' (U = 0, V random)"
        )
    if init not in LRC_INITS:
        raise ValueError(f"unknown LRC init '{init}'; choose one of {list(LRC_INITS)}")


def resolve_lrc_rank(rank: float | int, in_features: int, out_features: int) -> int:
    """The rank r of one layer: a float in (0, 1] is a fraction of min(in, out) (at least 1);
    an int >= 1 is absolute, capped at min(in, out). So ``1`` is rank one, ``1.0`` full rank."""
    full = min(in_features, out_features)
    if isinstance(rank, bool) or not isinstance(rank, int | float):
        raise TypeError(f"LRC rank must be a float fraction or an int, got {rank!r}")
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(
                f"LRC rank fraction must be in (0, 1], got {rank}; pass an int for an absolute rank"
            )
        return max(1, round(rank * full))
    if rank < 1:
        raise ValueError(f"LRC rank must be >= 1, got {rank}")
    return min(rank, full)


class BitLinearLRC(BitLinear):
    """BitLinear plus a full-precision low-rank path: y = Q_w(W)·Q_a(h) + b + U·(Vᵀ·h),
    h = H·SubLN(x) (LRC, arXiv 2412.07902, Eq. 2; U Vᵀ written as in the paper).

    Under lambda warm-up the path is scaled by lambda, as the quantization error it corrects
    is: at lambda 0 the layer is exactly the full-precision one, at lambda 1 the paper's."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int,
        device=None,
        dtype=None,
        **bitlinear_kwargs,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, device=device, dtype=dtype, **bitlinear_kwargs
        )
        self.lrc_rank = resolve_lrc_rank(rank, in_features, out_features)
        like = {"device": device, "dtype": dtype}
        self.lrc_U = nn.Parameter(torch.empty(out_features, self.lrc_rank, **like))  # (out, r)
        self.lrc_V = nn.Parameter(torch.empty(in_features, self.lrc_rank, **like))  # (in, r)
        self.init_lrc("kaiming")  # the weight is random here; from_bitlinear re-initialises

    @classmethod
    def from_bitlinear(
        cls, layer: BitLinear, rank: float | int = 0.1, init: str = "svd_residual"
    ) -> BitLinearLRC:
        """An LRC layer sharing ``layer``'s weight, bias and SubLN, with U, V initialised by
        ``init`` (see :meth:`init_lrc`)."""
        check_lrc_init(init)
        new = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            rank=rank,
            quant_lambda=layer.quant_lambda,
            quantize_activations=layer.quantize_activations,
            weight_quant=layer.weight_quant,
            hadamard=layer.hadamard,
            device="meta",
        )
        new.weight = layer.weight
        new.bias = layer.bias
        new.sub_norm = layer.sub_norm
        like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        new.lrc_U = nn.Parameter(torch.empty(new.out_features, new.lrc_rank, **like))
        new.lrc_V = nn.Parameter(torch.empty(new.in_features, new.lrc_rank, **like))
        new.train(layer.training)
        new.init_lrc(init)
        return new

    @torch.no_grad()
    def init_lrc(self, init: str = "svd_residual") -> None:
        """Initialise U and V.

        ``svd_residual``: U = P_r·√Σ_r, V = Q_r·√Σ_r from the SVD P·Σ·Qᵀ of W − Q(W), Q the
        layer's weight quantizer at full strength (lambda = 1, whatever the current lambda), so
        Q(W) + U·Vᵀ is the best rank-r correction in Frobenius norm (Eckart & Young 1936).
        ``kaiming``: V Kaiming-uniform (like ``nn.Linear`` / LoRA's A), U = 0: the layer starts
        as the plain BitLinear and U gets a gradient from the first step.
        Both factors zero is refused: each one's gradient is proportional to the other, so
        neither would ever move.
        """
        check_lrc_init(init)
        if init == "svd_residual":
            w = self.weight.float()
            residual = w - WEIGHT_QUANTIZERS[self.weight_quant](w)  # (out, in)
            # one thread: on an oversubscribed CPU, multi-threaded SVD of a 1536x576 matrix was
            # measured 3-40x slower than single-threaded (0.4 s)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                p, s, qt = torch.linalg.svd(residual, full_matrices=False)
            finally:
                torch.set_num_threads(threads)
            r = self.lrc_rank
            if s[0] == 0:
                raise ValueError(
                    f"W - Q(W) is zero for this {self.out_features}x{self.in_features} layer (its "
                    "weight is already ternary), so its SVD gives all-zero factors that cannot "
                    "train; use init='kaiming'"
                )
            root = s[:r].sqrt()  # (r,)
            self.lrc_U.copy_(p[:, :r] * root)  # (out, r)
            self.lrc_V.copy_(qt[:r].T * root)  # (in, r)
        else:  # kaiming
            v_t = torch.empty(self.lrc_rank, self.in_features, device=self.lrc_V.device)
            nn.init.kaiming_uniform_(v_t, a=math.sqrt(5))  # nn.Linear's default, fan_in = in
            self.lrc_V.copy_(v_t.T)
            self.lrc_U.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        h = self.transform_input(x)  # unquantized input of the weight
        y = self.quantized_linear(h)
        if self.quant_lambda == 0.0:  # full precision: no quantization error to correct
            return y
        correction = (h @ self.lrc_V) @ self.lrc_U.T  # (..., r) -> (..., out)
        # scaled like the error it corrects: W - mix(W, Q(W), lambda) = lambda (W - Q(W)), so
        # lambda warm-up starts from the exact full-precision layer (measured: unscaled, the
        # SVD-initialised correction broke the model at lambda 0, bench/quality.py)
        return y + correction if self.quant_lambda == 1.0 else y + self.quant_lambda * correction

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lrc_rank={self.lrc_rank}"


def convert_bitlinear_to_lrc(
    model: nn.Module, rank: float | int = 0.1, init: str = "svd_residual"
) -> nn.Module:
    """Give every BitLinear of ``model`` (in place) a low-rank correction; returns the model.

    ``rank``: fraction of min(in, out) (float, default 0.1) or absolute (int), see
    :func:`resolve_lrc_rank`. The choice is recorded in ``model.config.bitnet`` so
    :func:`wrinklefree.convert.load_bitnet` rebuilds the LRC layers. Layers that already have a
    correction are left alone.
    """
    check_lrc_init(init)
    has_lrc = any(isinstance(m, BitLinearLRC) for m in model.modules())
    replaced = replace_modules(
        model,
        lambda _, m: isinstance(m, BitLinear) and not isinstance(m, BitLinearLRC),
        lambda _, layer: BitLinearLRC.from_bitlinear(layer, rank, init),
    )
    if not replaced and not has_lrc:
        raise TypeError(
            f"{type(model).__name__} has no BitLinear layers; convert it first with "
            "wrinklefree.convert.convert_model_to_bitnet"
        )
    recorded = bitnet_config_of(model)
    if recorded is not None:
        record_bitnet(model, replace(recorded, lrc_rank=rank, lrc_init=init))
    return model


def freeze_model_except_lrc(model: nn.Module) -> list[nn.Parameter]:
    """Set ``requires_grad`` False on every parameter except the LRC factors; return those."""
    trainable: list[nn.Parameter] = []
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, BitLinearLRC):
            for p in (m.lrc_U, m.lrc_V):
                p.requires_grad_(True)
                trainable.append(p)
    if not trainable:
        raise ValueError(
            f"{type(model).__name__} has no LRC layers to train; add them with "
            "convert_bitlinear_to_lrc(model, rank=...) or convert with lrc_rank set"
        )
    return trainable
