"""Integer-only inference (Jacob et al. 2018): a quantized layer with no floating-point op.

Fake quantization (lessons 02-05) simulates the grid in float. A deployed int8 layer runs on
integers only. For ``y = x W^T + b`` with int8 input codes ``q_x`` (scale ``s_x``, zero point
``z_x``), symmetric int8 weights ``q_w`` (per output channel scale ``s_w[o]``) and output codes
``q_y`` (``s_y``, ``z_y``)::

    acc[n, o] = sum_k (q_x[n, k] - z_x) * q_w[o, k]  +  bias_q[o]      int8 x int8 -> int32
    bias_q[o] = round(b[o] / (s_x * s_w[o]))                             the bias, at the accumulator's scale
    q_y       = clamp(z_y + requantize(acc, M[o]), qmin, qmax)           M[o] = s_x * s_w[o] / s_y

``M`` is a real number below 1, so an integer machine stores it as a fixed-point multiplier
``M = M0 * 2^shift`` with ``M0`` an int32 in ``[2^30, 2^31)`` (TensorFlow Lite's
``QuantizeMultiplier``) and applies it with integer multiply, add and shift
(``MultiplyByQuantizedMultiplier``), either with TFLite's default *double rounding* or its
``TFLITE_SINGLE_ROUNDING`` form. ReLU fused into the layer is just ``qmin = z_y``.
Power-of-two scales (``M0 = 2^30``) make requantization a pure shift.

torch's own int8 kernels (``torch.ops.quantized.linear``) instead multiply the int32
accumulator by the float ``M`` and round half to even::

    q_y = clamp(rint(acc_without_bias * M + b / s_y) + z_y)

:func:`requantize_float` is that form (``rounding="float"``: fbgemm, x86, onednn; qnnpack first
rounds the bias to int32 at scale ``s_x s_w``: ``rounding="float_int32_bias"``). tests/test_integer.py
checks both against torch's engines bit for bit, and the fixed-point forms against hand cases
from TFLite's definitions.

**Why x86 wants 7-bit activations.** fbgemm's (and onednn's) u8 x s8 kernels multiply pairs of
adjacent products and add them in a *saturating int16* (the AVX2 instruction ``vpmaddubsw``):
``255 * 127 * 2 = 64770`` does not fit, so full-range uint8 activations can give wrong sums.
``accumulate(q_x, saturate_pairs=True)`` reproduces it exactly; torch's x86 observers use
``reduce_range=True`` (activation codes 0..127) so that a pair never saturates.

>>> m0, shift = quantize_multiplier(0.25)
>>> m0, shift, multiply_by_quantized_multiplier(torch.tensor([100, -100, 6]), m0, shift).tolist()
(1073741824, -1, [25, -25, 2])
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from qedu._validation import (FLOAT32_MAX, as_float32, as_float_tensor, check_bool, check_choice, check_int,
                              check_module, check_real)

__all__ = ["INT32_MIN", "INT32_MAX", "ROUNDINGS", "quantize_multiplier", "saturating_rounding_doubling_high_mul",
           "rounding_divide_by_pot", "multiply_by_quantized_multiplier", "requantize_float", "IntegerLinear",
           "IntegerMLP"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ROUNDINGS = ("double", "single", "float", "float_int32_bias")


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real = M0 * 2^(shift - 31)``, ``M0`` an int32 in ``[2^30, 2^31)``.

    ``frexp`` splits ``real = frac * 2^shift`` with ``frac`` in [0.5, 1); ``M0 = round(frac * 2^31)``
    (half away from zero, C's ``round``); a fraction that rounds up to ``2^31`` becomes ``2^30``
    with ``shift + 1``. Multipliers too small for 31 bits of shift become 0.

    >>> quantize_multiplier(0.5), quantize_multiplier(1.0), quantize_multiplier(0.0)
    ((1073741824, 0), (1073741824, 1), (0, 0))

    Raises:
        TypeError / ValueError: not a finite number >= 0, or too large (shift > 30).
    """
    real_multiplier = check_real(real_multiplier, "real_multiplier", 0, example="s_x * s_w / s_y")
    if real_multiplier == 0:
        return 0, 0
    frac, shift = math.frexp(real_multiplier)
    q = math.floor(frac * 2**31 + 0.5)  # frac > 0: round half away from zero
    if q == 2**31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"real_multiplier={real_multiplier} is too large for a 31-bit left shift (it must be < 2**30); "
                         "a requantization multiplier s_x * s_w / s_y is normally below 1: check the output scale s_y.")
    return q, shift


def _i64(x, name: str = "x", lo: int = INT32_MIN, hi: int = INT32_MAX) -> torch.Tensor:
    """``x`` (an integer tensor whose values lie in ``[lo, hi]``, by default int32's range) as int64."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int32 accumulators), got {getattr(x, 'dtype', type(x).__name__)}.")
    x = x.to(torch.int64)
    if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"{name} must hold values in [{lo}, {hi}], got values from {int(x.min())} to {int(x.max())}.")
    return x


def _div_toward_zero(a: torch.Tensor, b: int) -> torch.Tensor:
    """C's integer division (truncates toward zero), on int64."""
    return torch.div(a, b, rounding_mode="trunc")


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: int) -> torch.Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2^31)`` in int32 arithmetic.

    The rounding nudge is ``2^30`` for a non-negative product and ``1 - 2^30`` for a negative one,
    then C division truncates toward zero, so ties go up (1.5 -> 2, -1.5 -> -1);
    ``a = b = INT32_MIN`` saturates to ``INT32_MAX``.

    >>> saturating_rounding_doubling_high_mul(torch.tensor([2**30, -(2**30), 3]), 2**30).tolist()
    [536870912, -536870912, 2]
    """
    a, b = _i64(a, "a"), check_int(b, "b", INT32_MIN, INT32_MAX)
    ab = a * b
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    out = _div_toward_zero(ab + nudge, 1 << 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, torch.full_like(out, INT32_MAX), out)


def rounding_divide_by_pot(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away from zero.

    >>> rounding_divide_by_pot(torch.tensor([5, -5, 6, -6, 7]), 1).tolist()
    [3, -3, 3, -3, 4]
    """
    x = _i64(x)
    exponent = check_int(exponent, "exponent", 0, 31)
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(x: torch.Tensor, m0: int, shift: int, rounding: str = "double") -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier``: ``x * M0 * 2^(shift - 31)`` in integers.

    ``rounding="double"`` (TFLite's default): a rounding high multiply, then a rounding shift
    (two roundings). ``"single"`` (``TFLITE_SINGLE_ROUNDING``): one 64-bit product, one rounding
    shift with ties toward +inf. Both saturate to int32.

    Args:
        x: int32 values (e.g. accumulators). m0, shift: from :func:`quantize_multiplier`
            (``0 <= m0 < 2^31``, ``-31 <= shift <= 30``).

    Raises:
        TypeError / ValueError: ``x`` not integers in int32's range; ``m0``, ``shift`` or ``rounding`` out of range.
    """
    check_choice(rounding, "rounding", ("double", "single"))
    x = _i64(x)
    m0, shift = check_int(m0, "m0", 0, INT32_MAX), check_int(shift, "shift", -31, 30)
    if rounding == "single":
        total_shift = 31 - shift
        out = (x * m0 + (1 << (total_shift - 1))) >> total_shift
        return out.clamp(INT32_MIN, INT32_MAX)
    left, right = max(shift, 0), max(-shift, 0)
    high = saturating_rounding_doubling_high_mul((x * (1 << left)).clamp(INT32_MIN, INT32_MAX), m0)  # int32, as in C
    return rounding_divide_by_pot(high, right)


def requantize_float(acc: torch.Tensor, multiplier: torch.Tensor, bias_over_sy: torch.Tensor | None = None) -> torch.Tensor:
    """torch's int8 kernels: ``rint(acc * M + b / s_y)`` in float32 (before the output zero point).

    The result saturates to int32 (a float beyond it has no integer code).

    Raises:
        TypeError / ValueError: ``acc`` not int32 integers; ``multiplier`` not finite numbers > 0;
        ``bias_over_sy`` not finite.
    """
    multiplier = as_float32(as_float_tensor(multiplier, "multiplier"), "multiplier")
    if bool((multiplier <= 0).any()):
        raise ValueError(f"multiplier must be > 0 (s_x * s_w / s_y), got {multiplier.min().item()}.")
    out = _i64(acc, "acc").float() * multiplier
    if bias_over_sy is not None:
        out = out + as_float32(as_float_tensor(bias_over_sy, "bias_over_sy"), "bias_over_sy")
    # torch.round is half to even, as rint; the clamp runs in float64, where INT32_MAX is exact (float32 rounds it up)
    return torch.round(out).double().clamp(INT32_MIN, INT32_MAX).to(torch.int64)


class _QParams(NamedTuple):
    scale: float
    zero_point: int


class IntegerLinear(nn.Module):
    """An int8 linear layer computed with integers only (float multipliers with ``rounding="float"``).

    Built from a float ``nn.Linear``, the input's and output's (scale, zero point) in uint8 or
    int8, and per-output-channel symmetric int8 weights (``q_w = clamp(round(w / s_w), -127, 127)``,
    ``s_w = max|w[o]| / 127``). ``forward`` takes and returns integer codes.

    Raises:
        TypeError / ValueError: ``linear`` not an ``nn.Linear`` with finite weights; a
        ``(scale, zero_point)`` that is not ``(float > 0, int in qrange)``; ``qrange`` not an 8-bit
        range ``(qmin, qmax)``; a bias or multiplier the int32 / fixed-point path cannot hold.
    """

    def __init__(self, linear: nn.Linear, in_qparams: tuple[float, int], out_qparams: tuple[float, int],
                 relu: bool = False, rounding: str = "double", qrange: tuple[int, int] = (0, 255)):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.rounding = check_choice(rounding, "rounding", ROUNDINGS)
        check_bool(relu, "relu")
        if not isinstance(qrange, (tuple, list)) or len(qrange) != 2:
            raise TypeError(f"qrange must be (qmin, qmax), e.g. (0, 255) or (-128, 127), got {qrange!r}.")
        self.qmin, self.qmax = check_int(qrange[0], "qrange[0]", -128, 255), check_int(qrange[1], "qrange[1]", -128, 255)
        if self.qmin >= self.qmax or (self.qmin < 0 and self.qmax > 127):
            raise ValueError(f"qrange must be an 8-bit range with qmin < qmax, e.g. (0, 255) or (-128, 127), got {qrange!r}.")
        self.x_qp, self.y_qp = self._qparams(in_qparams, "in_qparams"), self._qparams(out_qparams, "out_qparams")
        w = as_float32(as_float_tensor(linear.weight.detach(), "linear.weight"), "linear.weight")
        s_w = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (C_out,)
        self.register_buffer("q_w", torch.clamp(torch.round(w / s_w[:, None]), -127, 127).to(torch.int8))
        self.register_buffer("s_w", s_w)
        b = torch.zeros(w.shape[0]) if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", as_float32(as_float_tensor(b, "linear.bias"), "linear.bias"))
        # everything the integer path needs, computed once when the model is converted
        bias_q = torch.round(b.double() / (self.x_qp.scale * s_w.double()))
        if bool((bias_q.abs() > INT32_MAX).any()):
            raise ValueError(f"the bias at the accumulator's scale, b / (s_x * s_w), does not fit int32 (largest "
                             f"{bias_q.abs().max().item():.3g}): in_qparams' scale {self.x_qp.scale:g} is too small.")
        self.register_buffer("bias_q", bias_q.to(torch.int32))
        real = self.x_qp.scale * s_w.double() / self.y_qp.scale  # M[o] = s_x s_w[o] / s_y
        pairs = [quantize_multiplier(float(m)) for m in real]
        self.register_buffer("m0", torch.tensor([p[0] for p in pairs], dtype=torch.int64))
        self.register_buffer("shift", torch.tensor([p[1] for p in pairs], dtype=torch.int64))
        self.register_buffer("multiplier_f32", (self.x_qp.scale * s_w / self.y_qp.scale).float())
        self.out_min = max(self.qmin, self.y_qp.zero_point) if relu else self.qmin  # fused ReLU: a clamp

    def _qparams(self, qparams, name: str) -> _QParams:
        if not isinstance(qparams, (tuple, list)) or len(qparams) != 2:
            raise TypeError(f"{name} must be (scale, zero_point), e.g. (0.02, 128), got {qparams!r}.")
        scale = check_real(qparams[0], f"{name}[0] (the scale)", 0, FLOAT32_MAX, lo_open=True, example="0.02")
        zero_point = check_int(qparams[1], f"{name}[1] (the zero point)", self.qmin, self.qmax)
        return _QParams(scale, zero_point)

    def accumulate(self, q_x: torch.Tensor, saturate_pairs: bool = False) -> torch.Tensor:
        """``sum_k (q_x - z_x) q_w`` in int32 (int64 storage, checked to fit), without the bias.

        ``saturate_pairs=True`` computes it as fbgemm's AVX2 kernel does: ``sum_k q_x q_w`` in
        pairs of adjacent ``k`` clamped to int16, then ``- z_x * sum_k q_w`` (precomputed).
        """
        q_x, q_w = _i64(q_x, "q_x", -128, 255), self.q_w.to(torch.int64)
        if q_x.ndim != 2 or q_x.shape[1] != q_w.shape[1]:
            raise ValueError(f"q_x must have shape (N, {q_w.shape[1]}) (in_features), got {tuple(q_x.shape)}.")
        if saturate_pairs:
            if q_x.shape[1] % 2:
                raise ValueError("saturate_pairs needs an even number of inputs (products are paired).")
            prod = q_x[:, None, :] * q_w[None, :, :]  # (N, C_out, K)
            pairs = prod.reshape(*prod.shape[:2], -1, 2).sum(-1).clamp(-(2**15), 2**15 - 1)  # int16 saturation
            return pairs.sum(-1) - self.x_qp.zero_point * q_w.sum(1)[None, :]
        acc = (q_x - self.x_qp.zero_point) @ q_w.t()  # (N, K) @ (K, C_out)
        if acc.numel() and acc.abs().max() > INT32_MAX:
            raise ValueError("the int32 accumulator overflowed: the layer has too many inputs for int8 x int8.")
        return acc

    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        acc = self.accumulate(q_x)
        if self.rounding == "float":
            q = requantize_float(acc, self.multiplier_f32, self.bias / self.y_qp.scale)
        elif self.rounding == "float_int32_bias":
            q = requantize_float(acc + self.bias_q.to(torch.int64), self.multiplier_f32)
        else:
            acc = acc + self.bias_q.to(torch.int64)
            q = torch.stack([multiply_by_quantized_multiplier(acc[:, o], int(self.m0[o]), int(self.shift[o]), self.rounding)
                             for o in range(acc.shape[1])], dim=1)
        return (q + self.y_qp.zero_point).clamp(self.out_min, self.qmax).to(torch.uint8 if self.qmin >= 0 else torch.int8)


class IntegerMLP(nn.Module):
    """qedu's digits MLP (``Flatten, Linear, ReLU, ..., Linear``) as integer layers, calibrated on ``x_calib``.

    Activation ranges come from min/max over the calibration batch (asymmetric uint8). ``forward``
    takes uint8 input codes and returns the last layer's uint8 codes; :meth:`predict` quantizes
    float images, runs the integer layers and dequantizes the logits.
    """

    def __init__(self, model: nn.Module, x_calib: torch.Tensor, rounding: str = "double"):
        super().__init__()
        check_module(model)
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers:
            raise ValueError("model has no nn.Linear layers to convert.")
        x_calib = self._check_images(x_calib, "x_calib", layers[0].in_features)
        with torch.no_grad():
            acts = [x_calib]
            h = acts[0]
            for i, lin in enumerate(layers):
                h = lin(h)
                if i < len(layers) - 1:
                    h = torch.relu(h)
                acts.append(h)
        if not all(bool(torch.isfinite(a).all()) for a in acts):
            raise ValueError("x_calib makes the float model's activations overflow float32; scale x_calib down.")
        qps = [_uint8_qparams(a) for a in acts]
        self.in_qparams = qps[0]
        self.layers = nn.ModuleList(
            IntegerLinear(lin, qps[i], qps[i + 1], relu=i < len(layers) - 1, rounding=rounding)
            for i, lin in enumerate(layers))

    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        q = q_x
        for layer in self.layers:
            q = layer(q)
        return q

    @staticmethod
    def _check_images(x, name: str, in_features: int) -> torch.Tensor:
        """``x`` flattened to ``(N, in_features)`` float32: finite, non-empty, the right size."""
        x = as_float32(as_float_tensor(x, name), name)
        if x.ndim < 2 or x[0].numel() != in_features:
            raise ValueError(f"{name} must have shape (N, ...) with {in_features} values per sample (the first layer's "
                             f"in_features), got {tuple(x.shape)}.")
        return x.flatten(1)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.in_qparams
        x = self._check_images(x, "x", self.layers[0].q_w.shape[1])
        return torch.clamp(torch.round(x / s) + z, 0, 255).to(torch.uint8)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions: the argmax of the last layer's codes (dequantizing is monotone)."""
        return self(self.quantize_input(x)).to(torch.int64).argmax(dim=1)


def _uint8_qparams(a: torch.Tensor) -> tuple[float, int]:
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)  # the range includes 0
    scale = max((hi - lo) / 255, torch.finfo(torch.float32).eps)
    return scale, int(min(max(round(-lo / scale), 0), 255))
