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
Power-of-two scales (``M0 = 2^30``) make requantization a pure shift. Round the *scales* to powers
of two (``power_of_two="scales"``), not just the multipliers (``"multiplier"``): the first keeps
every layer consistent with its grid, the second scales each channel by up to ``sqrt(2)``.

:class:`IntegerMLP` and :class:`IntegerCNN` (integer im2col convolutions, max-pooling on codes,
BatchNorm folded) run qedu's digits models from uint8 input codes to output codes;
:func:`trace_dtypes` records the dtype of every tensor torch produces on the way.

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

import copy
import math
from typing import NamedTuple

import torch
from torch import nn

from qedu._validation import (FLOAT32_MAX, as_float32, as_float_tensor, check_bool, check_choice, check_int,
                              check_module, check_real)
from qedu.ptq import PTQConfig, fold_batchnorm, quantize_model

__all__ = ["INT32_MIN", "INT32_MAX", "ROUNDINGS", "quantize_multiplier", "saturating_rounding_doubling_high_mul",
           "rounding_divide_by_pot", "multiply_by_quantized_multiplier", "power_of_two_multiplier", "requantize_float",
           "POWER_OF_TWO", "IntegerLinear", "IntegerConv2d", "IntegerMaxPool2d", "IntegerMLP", "IntegerCNN", "trace_dtypes",
           "integer_model", "integer_vs_fake_quant"]

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


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b) -> torch.Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2^31)`` in int32 arithmetic.

    The rounding nudge is ``2^30`` for a non-negative product and ``1 - 2^30`` for a negative one,
    then C division truncates toward zero, so ties go up (1.5 -> 2, -1.5 -> -1);
    ``a = b = INT32_MIN`` saturates to ``INT32_MAX``. ``b`` is an int or an integer tensor that
    broadcasts against ``a`` (one multiplier per output channel).

    >>> saturating_rounding_doubling_high_mul(torch.tensor([2**30, -(2**30), 3]), 2**30).tolist()
    [536870912, -536870912, 2]
    """
    a, b = _i64(a, "a"), _int_arg(b, "b", INT32_MIN, INT32_MAX)
    ab = a * b
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    out = _div_toward_zero(ab + nudge, 1 << 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, torch.full_like(out, INT32_MAX), out)


def rounding_divide_by_pot(x: torch.Tensor, exponent) -> torch.Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away from zero.

    ``exponent`` is an int in 0..31 or an integer tensor of them that broadcasts against ``x``.
    With a power-of-two multiplier ``M = 2^-n`` this *is* the whole requantization: a shift.

    >>> rounding_divide_by_pot(torch.tensor([5, -5, 6, -6, 7]), 1).tolist()
    [3, -3, 3, -3, 4]
    """
    x = _i64(x)
    exponent = _int_arg(exponent, "exponent", 0, 31)
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(x: torch.Tensor, m0, shift, rounding: str = "double") -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier``: ``x * M0 * 2^(shift - 31)`` in integers.

    ``rounding="double"`` (TFLite's default): a rounding high multiply, then a rounding shift
    (two roundings). ``"single"`` (``TFLITE_SINGLE_ROUNDING``): one 64-bit product, one rounding
    shift with ties toward +inf. Both saturate to int32. ``m0`` and ``shift`` are ints or integer
    tensors that broadcast against ``x`` (e.g. shape ``(C_out,)`` for an ``(N, C_out)``
    accumulator): no Python loop.

    Args:
        x: int32 values (e.g. accumulators). m0, shift: from :func:`quantize_multiplier`
            (``0 <= m0 < 2^31``, ``-31 <= shift <= 30``).

    Raises:
        TypeError / ValueError: ``x`` not integers in int32's range; ``m0``, ``shift`` or ``rounding`` out of range.

    >>> multiply_by_quantized_multiplier(torch.tensor([[10, 10]]), torch.tensor([2**30, 2**30]), torch.tensor([0, -1])).tolist()
    [[5, 3]]
    """
    check_choice(rounding, "rounding", ("double", "single"))
    x = _i64(x)
    m0, shift = _int_arg(m0, "m0", 0, INT32_MAX), _int_arg(shift, "shift", -31, 30)
    if rounding == "single":
        total_shift = 31 - shift
        out = (x * m0 + (torch.ones_like(total_shift) << (total_shift - 1))) >> total_shift
        return out.clamp(INT32_MIN, INT32_MAX)
    left, right = shift.clamp(min=0), (-shift).clamp(min=0)
    high = saturating_rounding_doubling_high_mul((x << left).clamp(INT32_MIN, INT32_MAX), m0)  # int32, as in C
    return rounding_divide_by_pot(high, right)


def _int_arg(v, name: str, lo: int, hi: int) -> torch.Tensor:
    """An int or an integer tensor with values in ``[lo, hi]``, as int64 (a multiplier, shift or exponent)."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be an int or an integer tensor, got dtype {v.dtype}.")
        v = v.to(torch.int64)
        if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
            raise ValueError(f"{name} must hold values in [{lo}, {hi}], got values from {int(v.min())} to {int(v.max())}.")
        return v
    return torch.tensor(check_int(v, name, lo, hi), dtype=torch.int64)


def power_of_two_multiplier(real_multiplier: float) -> tuple[int, int]:
    """``real`` rounded to the nearest power of two (in log2), as TFLite's ``(M0, shift)`` pair.

    ``2^round(log2 real) = 2^30 * 2^(shift - 31)``, so ``M0 = 2^30`` and
    ``shift = round(log2 real) + 1``: multiplying by it is one rounding shift, no multiplier.
    The rounding changes the multiplier by a factor between ``1/sqrt(2)`` and ``sqrt(2)``.

    >>> power_of_two_multiplier(0.25), power_of_two_multiplier(0.3), power_of_two_multiplier(0.37)
    ((1073741824, -1), (1073741824, -1), (1073741824, 0))
    """
    m0, shift = quantize_multiplier(real_multiplier)
    if m0 == 0:
        return 0, 0
    exponent = round(math.log2(real_multiplier))
    if not -31 <= exponent <= 29:
        raise ValueError(f"real_multiplier={real_multiplier} is outside the shifts a 32-bit machine has (2^-31..2^29).")
    return 1 << 30, exponent + 1


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


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= ``s`` (a scale rounded *up*, so nothing new clips)."""
    return torch.exp2(torch.ceil(torch.log2(s)))


class IntegerLinear(nn.Module):
    """An int8 linear layer computed with integers only (float multipliers with ``rounding="float"``).

    Built from a float ``nn.Linear``, the input's and output's (scale, zero point) in uint8 or
    int8, and per-output-channel symmetric int8 weights (``q_w = clamp(round(w / s_w), -127, 127)``,
    ``s_w = max|w[o]| / 127``). ``forward`` takes and returns integer codes.

    ``power_of_two`` makes it the layer of an accelerator without multipliers: requantizing is one
    rounding shift (:func:`rounding_divide_by_pot`), ``M`` rounded to the nearest power of two.
    ``"multiplier"`` rounds only ``M`` (the scales stay: each channel's gain is off by up to
    ``sqrt(2)``); ``"scales"`` also rounds ``s_w`` up to a power of two, so ``M`` is exact when
    ``s_x`` and ``s_y`` are powers of two too (:class:`IntegerMLP` then chooses them so).

    Raises:
        TypeError / ValueError: ``linear`` not an ``nn.Linear`` with finite weights; a
        ``(scale, zero_point)`` that is not ``(float > 0, int in qrange)``; ``qrange`` not an 8-bit
        range ``(qmin, qmax)``; a bias or multiplier the int32 / fixed-point path cannot hold;
        unknown ``rounding`` or ``power_of_two``; ``power_of_two`` with a float rounding.
    """

    def __init__(self, linear: nn.Linear, in_qparams: tuple[float, int], out_qparams: tuple[float, int],
                 relu: bool = False, rounding: str = "double", qrange: tuple[int, int] = (0, 255),
                 power_of_two: str | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.rounding = check_choice(rounding, "rounding", ROUNDINGS)
        self.power_of_two = _check_pow2(power_of_two)
        if power_of_two is not None and rounding not in ("double", "single"):
            raise ValueError(f"power_of_two={power_of_two!r} replaces the fixed-point multiplier by a shift; it needs "
                             f"rounding='double' or 'single', got {rounding!r}.")
        check_bool(relu, "relu")
        if not isinstance(qrange, (tuple, list)) or len(qrange) != 2:
            raise TypeError(f"qrange must be (qmin, qmax), e.g. (0, 255) or (-128, 127), got {qrange!r}.")
        self.qmin, self.qmax = check_int(qrange[0], "qrange[0]", -128, 255), check_int(qrange[1], "qrange[1]", -128, 255)
        if self.qmin >= self.qmax or (self.qmin < 0 and self.qmax > 127):
            raise ValueError(f"qrange must be an 8-bit range with qmin < qmax, e.g. (0, 255) or (-128, 127), got {qrange!r}.")
        self.x_qp, self.y_qp = self._qparams(in_qparams, "in_qparams"), self._qparams(out_qparams, "out_qparams")
        w = as_float32(as_float_tensor(linear.weight.detach(), "linear.weight"), "linear.weight")
        s_w = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (C_out,)
        if power_of_two == "scales":
            s_w = _pow2_ceil(s_w)
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
        to_fixed = power_of_two_multiplier if power_of_two else quantize_multiplier
        pairs = [to_fixed(float(m)) for m in real]
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

    def requantize(self, acc: torch.Tensor) -> torch.Tensor:
        """int32 accumulator (bias not yet added) -> output codes, clamped (fused ReLU included)."""
        if self.rounding == "float":
            q = requantize_float(acc, self.multiplier_f32, self.bias / self.y_qp.scale)
        elif self.rounding == "float_int32_bias":
            q = requantize_float(acc + self.bias_q.to(torch.int64), self.multiplier_f32)
        elif self.power_of_two is not None:  # M = 2^(shift - 1): a rounding shift right (or a left shift if M >= 1)
            acc = acc + self.bias_q.to(torch.int64)
            n = 1 - self.shift  # (C_out,)
            q = torch.where(n >= 0, rounding_divide_by_pot(acc, n.clamp(min=0)), acc << (-n).clamp(min=0))
        else:
            q = multiply_by_quantized_multiplier(acc + self.bias_q.to(torch.int64), self.m0, self.shift, self.rounding)
        return (q + self.y_qp.zero_point).clamp(self.out_min, self.qmax).to(torch.uint8 if self.qmin >= 0 else torch.int8)

    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        return self.requantize(self.accumulate(q_x))


class IntegerConv2d(nn.Module):
    """A Conv2d on integer codes: integer im2col, then :class:`IntegerLinear`'s matmul and requantization.

    Each output position reads a ``C_in x kh x kw`` patch of codes; padding is filled with the
    input zero point ``z_x`` (the code of a real 0). Patches ``(N*H_out*W_out, C_in*kh*kw)``
    times the weights ``(C_out, C_in*kh*kw)`` is the linear layer's int32 accumulation.

    Raises:
        TypeError: ``conv`` is not an ``nn.Conv2d``.
        ValueError: groups, dilation or a non-zero padding mode (not needed by the digits CNN).

    >>> layer = IntegerConv2d(nn.Conv2d(1, 2, 3, padding=1), (0.1, 0), (0.1, 0), relu=True)
    >>> out = layer(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    >>> out.shape, out.dtype
    (torch.Size([1, 2, 4, 4]), torch.uint8)
    """

    def __init__(self, conv: nn.Conv2d, in_qparams: tuple[float, int], out_qparams: tuple[float, int],
                 relu: bool = False, rounding: str = "double", power_of_two: str | None = None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}.")
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("conv must have groups=1, dilation=1 and numeric zero padding (the digits CNN's kind).")
        self.kernel, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        c_out = conv.out_channels
        lin = torch.nn.utils.skip_init(nn.Linear, conv.in_channels * self.kernel[0] * self.kernel[1], c_out)  # no RNG draw
        with torch.no_grad():
            lin.weight.copy_(conv.weight.detach().reshape(c_out, -1))  # (C_out, C_in, kh, kw) -> (C_out, C_in*kh*kw)
            lin.bias.copy_(torch.zeros(c_out) if conv.bias is None else conv.bias.detach())
        self.linear = IntegerLinear(lin, in_qparams, out_qparams, relu=relu, rounding=rounding, power_of_two=power_of_two)

    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        q_x = _i64(q_x)
        n, _, h, w = q_x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        padded = torch.full((n, q_x.shape[1], h + 2 * ph, w + 2 * pw), self.linear.x_qp.zero_point, dtype=torch.int64)
        padded[:, :, ph:ph + h, pw:pw + w] = q_x
        patches = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C_in, H_out, W_out, kh, kw)
        h_out, w_out = patches.shape[2], patches.shape[3]
        cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, -1)  # (N*H_out*W_out, C_in*kh*kw)
        q = self.linear(cols)  # (N*H_out*W_out, C_out)
        return q.reshape(n, h_out, w_out, -1).permute(0, 3, 1, 2)  # (N, C_out, H_out, W_out)


class IntegerMaxPool2d(nn.Module):
    """Max-pooling on codes: ``x_hat = s (q - z)`` is increasing in ``q``, so the max code is the max value.

    >>> IntegerMaxPool2d(nn.MaxPool2d(2))(torch.tensor([[[[1, 5], [7, 2]]]], dtype=torch.uint8)).tolist()
    [[[[7]]]]
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        k, st = pool.kernel_size, pool.stride
        self.kernel = (k, k) if isinstance(k, int) else tuple(k)
        self.stride = (st, st) if isinstance(st, int) else tuple(st)
        if pool.padding not in (0, (0, 0)) or pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise ValueError("only unpadded, undilated max-pooling with floor mode is supported.")

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        windows = q.unfold(2, self.kernel[0], self.stride[0]).unfold(3, self.kernel[1], self.stride[1])
        return windows.amax(dim=(-2, -1))  # (N, C, H_out, W_out, kh, kw) -> (N, C, H_out, W_out)


POWER_OF_TWO = (None, "multiplier", "scales")


def _check_pow2(power_of_two):
    if power_of_two not in POWER_OF_TWO or isinstance(power_of_two, bool):
        raise ValueError(f"power_of_two must be None, 'multiplier' or 'scales', got {power_of_two!r}.")
    return power_of_two


def _act_qparams(a: torch.Tensor, power_of_two) -> tuple[float, int]:
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)  # the range includes 0
    scale = max((hi - lo) / 255, torch.finfo(torch.float32).eps)
    if power_of_two == "scales":
        scale = 2.0 ** math.ceil(math.log2(scale))
    return scale, int(min(max(round(-lo / scale), 0), 255))


def _uint8_qparams(a: torch.Tensor) -> tuple[float, int]:
    return _act_qparams(a, None)


# Images per pass: integer layers are exact per image, so splitting a batch changes no result, only
# the size of the int64 intermediates (an im2col of 360 digits is ~60 MiB).
CHUNK = 64


class _IntegerModel(nn.Module):
    """Shared by :class:`IntegerMLP` and :class:`IntegerCNN`: a chain of integer layers on uint8 codes."""

    in_qparams: tuple[float, int]
    out_qparams: tuple[float, int]

    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        if q_x.ndim > 1 and q_x.shape[0] > CHUNK:  # int64 im2col of a big batch is big: a few rows at a time
            return torch.cat([self(part) for part in q_x.split(CHUNK)])
        q = q_x
        for layer in self.layers:
            q = layer(q)
        return q

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float images -> uint8 input codes (the one float step, done by the sensor side)."""
        s, z = self.in_qparams
        x = x.float()
        if self.flatten_input:
            x = x.flatten(1)
        return torch.clamp(torch.round(x / s) + z, 0, 255).to(torch.uint8)

    def dequantize_output(self, q: torch.Tensor) -> torch.Tensor:
        """Output codes -> float logits ``s_y (q - z_y)``."""
        s, z = self.out_qparams
        return s * (q.to(torch.int64) - z).float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions: the argmax of the last layer's codes (dequantizing is monotone)."""
        return self(self.quantize_input(x)).to(torch.int64).argmax(dim=1)


class IntegerMLP(_IntegerModel):
    """qedu's digits MLP (``Flatten, Linear, ReLU, ..., Linear``) as integer layers, calibrated on ``x_calib``.

    Activation ranges come from min/max over the calibration batch (asymmetric uint8). ``forward``
    takes uint8 input codes and returns the last layer's uint8 codes; :meth:`predict` quantizes
    float images, runs the integer layers and dequantizes the logits. ``power_of_two="scales"``
    rounds every scale up to a power of two, so each requantization is an exact shift;
    ``"multiplier"`` keeps the scales and rounds each multiplier (see :class:`IntegerLinear`).
    """

    flatten_input = True

    def __init__(self, model: nn.Module, x_calib: torch.Tensor, rounding: str = "double",
                 power_of_two: str | None = None):
        super().__init__()
        check_module(model)
        _check_pow2(power_of_two)
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
        qps = [_act_qparams(a, power_of_two) for a in acts]
        self.in_qparams, self.out_qparams = qps[0], qps[-1]
        self.layers = nn.ModuleList(
            IntegerLinear(lin, qps[i], qps[i + 1], relu=i < len(layers) - 1, rounding=rounding, power_of_two=power_of_two)
            for i, lin in enumerate(layers))

    @staticmethod
    def _check_images(x, name: str, in_features: int) -> torch.Tensor:
        """``x`` flattened to ``(N, in_features)`` float32: finite, non-empty, the right size."""
        x = as_float32(as_float_tensor(x, name), name)
        if x.ndim < 2 or x[0].numel() != in_features:
            raise ValueError(f"{name} must have shape (N, ...) with {in_features} values per sample (the first layer's "
                             f"in_features), got {tuple(x.shape)}.")
        return x.flatten(1)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float images -> uint8 input codes, checked: ``(N, ...)`` with in_features values each, finite."""
        s, z = self.in_qparams
        x = self._check_images(x, "x", self.layers[0].q_w.shape[1])
        return torch.clamp(torch.round(x / s) + z, 0, 255).to(torch.uint8)


class _Flatten(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return q.flatten(1)  # (N, C, H, W) -> (N, C*H*W), the order of nn.Flatten on NCHW


class IntegerCNN(_IntegerModel):
    """qedu's digits CNN (``Conv, BN, ReLU, MaxPool, Conv, BN, ReLU, Flatten, Linear``) on integers.

    BatchNorm is folded into the convolution before it (:func:`qedu.ptq.fold_batchnorm`), each
    ReLU is fused into its layer's output clamp, max-pooling takes the max code, flattening
    reorders codes. Activation ranges: min/max of each layer's output on ``x_calib`` (uint8).

    Raises:
        ValueError: the model holds a module other than Conv2d, Linear, BatchNorm (folded),
            ReLU, MaxPool2d, Flatten.

    >>> from qedu.models import make_cnn
    >>> icnn = IntegerCNN(make_cnn(seed=0), torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    >>> [type(m).__name__ for m in icnn.layers], icnn(icnn.quantize_input(torch.rand(2, 1, 8, 8))).dtype
    (['IntegerConv2d', 'IntegerMaxPool2d', 'IntegerConv2d', '_Flatten', 'IntegerLinear'], torch.uint8)
    """

    flatten_input = False

    def __init__(self, model: nn.Module, x_calib: torch.Tensor, rounding: str = "double",
                 power_of_two: str | None = None):
        super().__init__()
        _check_pow2(power_of_two)
        check_module(model)
        folded = fold_batchnorm(model)
        mods = [m for m in folded.children() if not isinstance(m, nn.Identity)]
        for m in mods:
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)):
                raise ValueError(f"IntegerCNN converts Conv2d/Linear/BatchNorm/ReLU/MaxPool2d/Flatten chains; "
                                 f"the model holds a {type(m).__name__}.")
        x = as_float_tensor(x_calib, "x_calib").float()  # refuses empty, NaN and inf calibration data
        qp = _act_qparams(x, power_of_two)
        self.in_qparams = qp
        layers = []
        with torch.no_grad():
            i = 0
            while i < len(mods):
                m = mods[i]
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                    x = m(x)
                    if relu:
                        x = torch.relu(x)
                    out_qp = _act_qparams(x, power_of_two)
                    kind = IntegerConv2d if isinstance(m, nn.Conv2d) else IntegerLinear
                    layers.append(kind(m, qp, out_qp, relu=relu, rounding=rounding, power_of_two=power_of_two))
                    qp = out_qp
                    i += 2 if relu else 1
                    continue
                if isinstance(m, nn.ReLU):
                    raise ValueError("IntegerCNN fuses a ReLU into the Conv2d/Linear before it; this one follows none.")
                x = m(x)  # pooling and flattening keep the grid: same qparams
                layers.append(IntegerMaxPool2d(m) if isinstance(m, nn.MaxPool2d) else _Flatten())
                i += 1
        self.out_qparams = qp
        self.layers = nn.ModuleList(layers)


def trace_dtypes(fn, *args) -> list[tuple[str, torch.dtype]]:
    """Every tensor that ``fn(*args)`` produces, as ``(aten op, dtype)``, recorded by a dispatch mode.

    Each op torch runs (matmul, add, shift, clamp, view, ...) passes through the recorder, so an
    integer-only claim is checked on every intermediate, not only on the layers' outputs.

    >>> ops = trace_dtypes(lambda q: (q * 3) >> 1, torch.tensor([5], dtype=torch.int32))
    >>> [(name, str(dt)) for name, dt in ops]
    [('aten.mul.Tensor', 'torch.int32'), ('aten.__rshift__.Scalar', 'torch.int32')]
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, torch.dtype]] = []

    class _Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    seen.append((str(func), t.dtype))
            return out

    with torch.no_grad(), _Recorder():
        fn(*args)
    return seen


def integer_model(model: nn.Module, x_calib: torch.Tensor, rounding: str = "double",
                  power_of_two: str | None = None) -> _IntegerModel:
    """:class:`IntegerCNN` for a model with convolutions, else :class:`IntegerMLP`."""
    check_module(model)
    cls = IntegerCNN if any(isinstance(m, nn.Conv2d) for m in model.modules()) else IntegerMLP
    return cls(model, x_calib, rounding=rounding, power_of_two=power_of_two)


def integer_vs_fake_quant(model: nn.Module, data, rounding: str = "double", power_of_two: str | None = None) -> dict:
    """The integer model against the fake-quantized one (``qedu.ptq``, same grids) on ``data``'s test split.

    Both calibrate on ``data.x_calib`` with min/max (uint8 activations, int8 per-channel weights).

    Returns:
        dict with ``float_accuracy``, ``fake_quant_accuracy``, ``integer_accuracy``,
        ``agreement`` (share of test images where the integer and fake-quantized predictions are
        identical) and ``logit_sqnr_db`` (the integer model's dequantized logits against the float
        model's: ``10 log10(sum y^2 / sum (y - y_int)^2)``).
    """
    check_module(model)
    imodel = integer_model(model, data.x_calib, rounding=rounding, power_of_two=power_of_two)
    fq = quantize_model(model, PTQConfig(), data.x_calib)
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(data.x_test)  # never change the caller's mode
        fq_pred = fq(data.x_test).argmax(1)
    int_logits = imodel.dequantize_output(imodel(imodel.quantize_input(data.x_test)))
    int_pred = int_logits.argmax(1)
    y = data.y_test

    def acc(p):
        return (p == y).float().mean().item()

    sqnr = 10 * math.log10(float(logits.pow(2).sum()) / max(float((logits - int_logits).pow(2).sum()), 1e-30))
    return dict(float_accuracy=acc(logits.argmax(1)), fake_quant_accuracy=acc(fq_pred), integer_accuracy=acc(int_pred),
                agreement=(int_pred == fq_pred).float().mean().item(), logit_sqnr_db=sqnr)
