"""Uniform (affine) integer quantization, from scratch, matching torch bit for bit.

A uniform quantizer maps a real ``x`` to an integer code ``q`` on a grid of step ``scale``
whose real zero sits at the integer ``zero_point``::

    q     = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)      # quantize
    x_hat = (q - zero_point) * scale                                     # dequantize

``fake_quantize`` is the two in a row: a float tensor that holds only grid values. The codes'
range ``qmin..qmax`` comes from an :class:`~qedu.formats.IntFormat` (``INT8`` is -128..127).
``choose_qparams`` picks ``scale`` and ``zero_point`` from the data's min and max, per tensor,
per channel or per group (:mod:`qedu.granularity`).

All arithmetic is float32 and follows torch's CPU fake-quantize kernels operation for
operation, so with the same ``scale`` and ``zero_point`` the reconstructions equal
``torch.fake_quantize_per_tensor_affine`` and ``torch.fake_quantize_per_channel_affine``
exactly, and ``choose_qparams`` reproduces torch.ao's ``MinMaxObserver`` /
``PerChannelMinMaxObserver`` exactly (``tests/test_quantizers.py`` proves both on millions of
values, ties included). ``torch.quantize_per_tensor(...).int_repr()`` (and per channel) gives
the same codes whenever ``zero_point == 0``; with another zero point it adds the zero point
*before* rounding (``rint(x * inv_scale + zero_point)``, fused in one multiply-add per tensor),
so at exact and near ties it can land one code away from torch's own fake-quantize -- qedu
follows fake-quantize, whose formula is the one every paper writes.

>>> x = torch.tensor([-1.0, 0.0, 0.26, 2.0])
>>> scale, zero_point = choose_qparams(x, INT8, symmetric=False)
>>> fake_quantize(x, scale, zero_point, INT8)
tensor([-1.0000,  0.0000,  0.2588,  2.0000])
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from qedu._validation import FLOAT32_MAX, FLOAT32_TINY, as_float32, as_float_tensor, check_choice, check_real
from qedu.formats import INT8, IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor

__all__ = [
    "FLOAT32_EPS", "ROUNDING_MODES", "SYMMETRIC_RULES", "choose_qparams", "choose_qparams_from_minmax",
    "round_codes", "quantize", "dequantize", "fake_quantize", "QuantizationError", "quantization_error",
]

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 1.1920929e-07: torch observers' smallest scale
ROUNDING_MODES = ("half_even", "half_away", "floor", "stochastic")
SYMMETRIC_RULES = ("half_range", "no_clip")


# ----------------------------------------------------------------------------- input checks
def _check_fmt(fmt) -> IntFormat:
    if not isinstance(fmt, IntFormat):
        raise TypeError(
            f"fmt must be an IntFormat such as qedu.formats.INT8 or IntFormat(4), got {type(fmt).__name__} {fmt!r}. "
            "Integer quantization maps to integer codes; floating-point formats are a cast, not a scale and zero point."
        )
    return fmt


def _check_x(x, name: str = "x") -> torch.Tensor:
    """x as float32; refuses empty and non-finite input (torch would map NaN silently to qmin or qmax)."""
    x = as_float_tensor(x, name, allow_nonfinite=True)
    if not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} inf values; quantization needs finite numbers "
            f"(torch's kernels silently turn NaN into qmin or qmax, hiding the bug). Find where they come from, "
            f"or clean them with torch.nan_to_num({name})."
        )
    return as_float32(x, name)  # torch's kernels compute in float32; float64 input is rounded to float32 first


def _broadcasts_to(t: torch.Tensor, shape, name: str) -> None:
    # t broadcasts to shape when, aligned from the right, each of its sizes is 1 or shape's size. (Not
    # torch.broadcast_shapes: its first call imports SymPy, ~31-34 MiB per kernel.)
    ok = t.dim() <= len(shape) and all(a == 1 or a == b for a, b in zip(reversed(t.shape), reversed(tuple(shape))))
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}, which does not broadcast to x's shape {tuple(shape)}; "
            f"use the {name} that choose_qparams returns for this x (it has the right keepdim shape)."
        )


def _check_scale(scale, shape) -> torch.Tensor:
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        scale = torch.tensor(float(scale))
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a float or a float tensor, got {type(scale).__name__} {scale!r}.")
    if not scale.is_floating_point():
        raise TypeError(f"scale must be a float tensor, got dtype {scale.dtype}; convert it with scale.float().")
    scale = scale.to(torch.float32)
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        bad = scale[~(torch.isfinite(scale) & (scale > 0))][0].item()
        raise ValueError(
            f"scale must be positive and finite everywhere, got {bad}; a grid step of 0 or less has no meaning "
            "(torch accepts it silently). Compute it with choose_qparams, which never returns less than "
            f"eps={FLOAT32_EPS:.8g}."
        )
    inv_scale = 1.0 / scale
    if not bool(torch.isfinite(inv_scale).all()):
        bad = scale[~torch.isfinite(inv_scale)][0].item()
        raise ValueError(
            f"scale={bad:.4g} is so small that 1 / scale overflows float32 (it must be at least about "
            f"{1 / FLOAT32_MAX:.3g}; choose_qparams never goes below {FLOAT32_EPS:.8g}); every code would be wrong. "
            "Use a larger scale."
        )
    _broadcasts_to(scale, shape, "scale")
    return scale


def _check_grid_fits(scale: torch.Tensor, zero_point: torch.Tensor, fmt: IntFormat) -> None:
    """Refuse a grid whose outermost level ``scale * (qmin - zero_point)`` or ``scale * (qmax - zero_point)``
    overflows float32: fake-quantizing or dequantizing would return inf from finite input."""
    zp = zero_point.to(torch.float32)
    reach = torch.maximum((fmt.qmax - zp).abs(), (fmt.qmin - zp).abs())  # the largest |code - zero_point|
    if not bool(torch.isfinite(scale * reach).all()):
        raise ValueError(
            f"scale={float(scale.max()):.4g} is too large for {fmt}: the grid's outermost level scale * "
            f"(q - zero_point) overflows float32 (largest {FLOAT32_MAX:.4g}) and would dequantize to inf. "
            "Use a smaller scale (choose_qparams picks one that fits)."
        )


def _check_zero_point(zero_point, shape, fmt: IntFormat | None) -> torch.Tensor:
    if isinstance(zero_point, numbers.Integral) and not isinstance(zero_point, bool):
        zero_point = torch.tensor(int(zero_point), dtype=torch.int32)
    if isinstance(zero_point, float) or (isinstance(zero_point, torch.Tensor) and zero_point.is_floating_point()):
        raise TypeError(
            f"zero_point must be an integer (an int or an integer tensor), got {zero_point!r}: the real 0 must land "
            "exactly on a code. Round it: torch.round(zero_point).to(torch.int32)."
        )
    if not isinstance(zero_point, torch.Tensor) or zero_point.dtype == torch.bool or zero_point.is_complex():
        raise TypeError(f"zero_point must be an int or an integer tensor, got {type(zero_point).__name__} {zero_point!r}.")
    if fmt is not None and zero_point.numel() and not bool(((zero_point >= fmt.qmin) & (zero_point <= fmt.qmax)).all()):
        bad = zero_point[(zero_point < fmt.qmin) | (zero_point > fmt.qmax)][0].item()
        raise ValueError(
            f"zero_point must lie in [qmin, qmax] = [{fmt.qmin}, {fmt.qmax}] for {fmt}, got {bad}; "
            "otherwise the real 0 is not representable. Clamp it or use choose_qparams."
        )
    _broadcasts_to(zero_point, shape, "zero_point")
    return zero_point


# ----------------------------------------------------------------------------- choosing qparams
def choose_qparams_from_minmax(min_val, max_val, fmt: IntFormat, symmetric: bool = True, *,
                               symmetric_rule: str = "half_range", eps: float = FLOAT32_EPS):
    """Scale and zero point that map the range ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    The range is first widened to include 0 (``min_neg = min(min_val, 0)``, ``max_pos =
    max(max_val, 0)``) so that a real 0 (padding, ReLU output) is exactly representable. Then,
    in float32, exactly as torch.ao's observers::

        affine:     scale = (max_pos - min_neg) / (qmax - qmin)
                    zero_point = clamp(qmin - round(min_neg / scale), qmin, qmax)
        symmetric:  scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2)     ("half_range")
                    zero_point = 0 for signed formats, (qmin + qmax + 1) // 2 for unsigned (128 for uint8)
        both:       scale = max(scale, eps)        # constant or all-zero input still gets a step

    ``symmetric_rule`` picks the symmetric step:

    * ``"half_range"`` (default, torch's and torchao's rule): int8's 256 codes span
      ``2 * max|x|``, so ``step = max|x| / 127.5``. The largest positive value lands half a step
      past ``qmax`` and is clipped by half a step -- the same worst-case error as rounding
      anywhere else -- and in return the step is a little finer. qedu uses it by default so
      that its numbers equal torch's and the lesson can explain the quirk.
    * ``"no_clip"``: ``scale = max|x| / (qmax - zero_point)`` (``max|x| / 127`` for int8): both
      ends are representable and nothing clips, at a 0.4% coarser step.

    Args:
        min_val, max_val: the observed range; tensors of the same shape (any shape) or floats.
        fmt: the integer format, e.g. ``INT8``; torch's ``reduce_range=True`` is the 7-bit
            format (``IntFormat(7)`` for qint8, ``IntFormat(7, signed=False)`` for quint8).
        symmetric: ``True`` for a grid symmetric around 0, ``False`` for an affine grid.
        symmetric_rule: ``"half_range"`` or ``"no_clip"`` (see above).
        eps: smallest allowed scale.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of ``min_val``'s shape.

    Raises:
        TypeError / ValueError: for a non-IntFormat ``fmt``, NaN or inf range, ``min_val > max_val``,
            an unknown ``symmetric_rule``, an ``eps`` that is not a normal float32 whose grid fits in
            float32, a symmetric 1-bit grid (its two codes cannot sit on both sides of 0), or a
            range so wide that the scale or the grid's outermost level overflows float32.

    >>> choose_qparams_from_minmax(torch.tensor(-1.0), torch.tensor(2.0), INT8, symmetric=False)
    (tensor(0.0118), tensor(-43, dtype=torch.int32))
    """
    fmt = _check_fmt(fmt)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}.")
    check_choice(symmetric_rule, "symmetric_rule", SYMMETRIC_RULES)
    if not (isinstance(eps, numbers.Real) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}; the default is {FLOAT32_EPS:.8g}.")
    eps32 = float(torch.tensor(float(eps), dtype=torch.float32))  # the eps really used
    if not FLOAT32_TINY <= eps32 <= FLOAT32_MAX / (fmt.qmax - fmt.qmin):
        raise ValueError(
            f"eps={eps!r} is {eps32:.4g} in float32, outside [{FLOAT32_TINY:.4g}, {FLOAT32_MAX / (fmt.qmax - fmt.qmin):.4g}]: "
            "a smaller scale has no finite 1 / scale, a larger one overflows the grid of "
            f"{fmt}. Use the default eps={FLOAT32_EPS:.8g}."
        )
    if symmetric and symmetric_rule == "half_range" and fmt.bits == 1:
        raise ValueError(
            f"a symmetric grid needs at least 2 bits: {fmt} has the codes {fmt.qmin} and {fmt.qmax} only, so "
            "every value on one side of 0 would land on 0. Use symmetric=False (an affine 1-bit grid), or 2 bits or more."
        )
    min_val = _check_x(min_val, "min_val")
    max_val = _check_x(max_val, "max_val")
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {tuple(min_val.shape)} and {tuple(max_val.shape)}.")
    if bool((min_val > max_val).any()):
        raise ValueError("min_val is larger than max_val somewhere; pass (min, max) in that order.")
    qmin, qmax = fmt.qmin, fmt.qmax
    min_neg = torch.minimum(min_val, torch.zeros_like(min_val))  # widen the range to include 0
    max_pos = torch.maximum(max_val, torch.zeros_like(max_val))
    eps_t = torch.tensor(eps, dtype=torch.float32)
    if symmetric:
        zp = 0 if fmt.signed else (qmin + qmax + 1) // 2
        max_abs = torch.maximum(-min_neg, max_pos)
        if symmetric_rule == "half_range":
            scale = max_abs / (float(qmax - qmin) / 2)
        else:
            n_steps = min(qmax - zp, zp - qmin)
            if n_steps < 1:
                raise ValueError(f"{fmt} has no code on one side of zero_point {zp}; symmetric_rule='no_clip' needs "
                                 "at least 2 bits (or use symmetric=False).")
            scale = max_abs / float(n_steps)
        scale = torch.maximum(scale, eps_t)
        zero_point = torch.full_like(scale, zp, dtype=torch.int32)
    else:
        scale = (max_pos - min_neg) / float(qmax - qmin)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(
                "the range max_val - min_val overflows float32 (largest "
                f"{FLOAT32_MAX:.4g}): got min {float(min_neg.min()):.4g} and max {float(max_pos.max()):.4g}. "
                "Scale the values down (check their units), or use symmetric=True."
            )
        scale = torch.maximum(scale, eps_t)
        zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)  # torch divides here (not * 1/scale)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    try:
        _check_grid_fits(scale, zero_point, fmt)
    except ValueError:
        raise ValueError(
            f"the range [{float(min_neg.min()):.4g}, {float(max_pos.max()):.4g}] is too close to float32's limit "
            f"({FLOAT32_MAX:.4g}) for {fmt}: the grid's outermost level would overflow to inf. Scale the values down."
        ) from None
    return scale, zero_point


def choose_qparams(x, fmt: IntFormat, granularity=PerTensor(), symmetric: bool = True, *,
                   symmetric_rule: str = "half_range", eps: float = FLOAT32_EPS):
    """Scale and zero point from the min and max of each slice of ``x``.

    ``min_val, max_val = granularity.reduce(x, min), granularity.reduce(x, max)``, then
    :func:`choose_qparams_from_minmax` (read it for the formulas, the range widened to include 0,
    the eps floor and the two symmetric rules).

    With the defaults this reproduces torch.ao exactly:

    ==========================================  ====================================================
    torch.ao observer                            qedu
    ==========================================  ====================================================
    ``MinMaxObserver(qint8, per_tensor_affine)`` ``choose_qparams(x, INT8, symmetric=False)``
    ``MinMaxObserver(quint8, ..._symmetric)``    ``choose_qparams(x, UINT8)``
    ``..., reduce_range=True``                   the 7-bit format: ``IntFormat(7)`` / ``IntFormat(7, signed=False)``
    ``PerChannelMinMaxObserver(ch_axis=a, ...)`` ``choose_qparams(x, ..., PerChannel(a), ...)``
    ==========================================  ====================================================

    Args:
        x: real values (tensor, array or list), finite, not empty.
        fmt: the integer format of the codes.
        granularity: ``PerTensor()``, ``PerChannel(axis)`` or ``PerGroup(group_size, axis)``.
        symmetric, symmetric_rule, eps: as in :func:`choose_qparams_from_minmax`.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors that broadcast against ``x``
        (0-d per tensor, keepdim per channel, x's shape per group).

    Raises:
        TypeError / ValueError: for bad ``x`` (empty, NaN/inf, non-numeric), ``fmt`` or
            ``granularity``, and as :func:`choose_qparams_from_minmax`.

    >>> choose_qparams(torch.tensor([[-1.0, 0.5], [0.2, 4.0]]), INT8, PerChannel(0))
    (tensor([[0.0078],
            [0.0314]]), tensor([[0],
            [0]], dtype=torch.int32))
    """
    x = _check_x(x)
    if not isinstance(granularity, (PerTensor, PerChannel, PerGroup)):
        raise TypeError(f"granularity must be PerTensor(), PerChannel(axis) or PerGroup(group_size), "
                        f"got {type(granularity).__name__} {granularity!r}.")
    min_val = granularity.reduce(x, lambda rows: rows.amin(dim=1))
    max_val = granularity.reduce(x, lambda rows: rows.amax(dim=1))
    return choose_qparams_from_minmax(min_val, max_val, fmt, symmetric, symmetric_rule=symmetric_rule, eps=eps)


# ----------------------------------------------------------------------------- rounding
def round_codes(v: torch.Tensor, rounding: str = "half_even", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round real-valued codes ``v = x / scale`` to integers (as float32).

    * ``"half_even"``: to the nearest integer, ties to the even one (``torch.round``, C's
      ``nearbyint``; what torch's quantizers use). 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
    * ``"half_away"``: nearest, ties away from zero (C's ``round``). 2.5 -> 3, -2.5 -> -3.
      Written with ``trunc`` because ``sign(v) * floor(|v| + 0.5)`` rounds 0.49999997 up to 1
      in float32.
    * ``"floor"``: down, towards -inf. Biased by -1/2 step on average.
    * ``"stochastic"``: down or up at random, up with probability ``v - floor(v)``, so the
      expected value is ``v`` exactly (unbiased). Reproducible with ``generator``.

    The directed modes see float32 error: ``v = x * (1/scale)`` for a grid value ``x = k * scale``
    can come out a hair below ``k`` (``56.046875 * (1/56.046875) = 0.99999994``), and ``floor``
    then drops a whole step. The nearest modes have half a step of slack and map grid values to
    themselves.

    ``v`` may be a tensor, array, list or number (float64 keeps its dtype). inf and NaN pass
    through unchanged (:func:`quantize` clamps an inf code to ``qmin``/``qmax``).

    Raises:
        TypeError / ValueError: a non-numeric ``v``, an unknown ``rounding``, a ``generator``
            that is not a ``torch.Generator``.

    >>> round_codes(torch.tensor([-2.5, -0.5, 0.5, 1.5, 2.5]))
    tensor([-2., -0.,  0.,  2.,  2.])
    >>> round_codes(torch.tensor([-2.5, -0.5, 0.5, 1.5, 2.5]), "half_away")
    tensor([-3., -1.,  1.,  2.,  3.])
    """
    check_choice(rounding, "rounding", ROUNDING_MODES)
    if not isinstance(v, torch.Tensor):
        v = as_float_tensor(v, "v", allow_empty=True, allow_nonfinite=True)
    elif not v.is_floating_point():
        v = as_float_tensor(v, "v", allow_empty=True, allow_nonfinite=True)  # integer codes: float32 (bool refused)
    if rounding == "half_even":
        return torch.round(v)
    if rounding == "half_away":
        tie = (v - torch.trunc(v)).abs() == 0.5
        return torch.where(tie, torch.trunc(v) + torch.sign(v), torch.round(v))
    if rounding == "floor":
        return torch.floor(v)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                        "make one with torch.Generator().manual_seed(0).")
    lower = torch.floor(v)
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)  # uniform in [0, 1)
    return lower + (u < (v - lower)).to(v.dtype)  # up with probability frac(v)


# ----------------------------------------------------------------------------- (de)quantize
def quantize(x, scale, zero_point, fmt: IntFormat, rounding: str = "half_even",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer codes of ``x``: ``q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)``.

    Multiplying by the reciprocal, not dividing, is what torch's kernels do (one division per
    tensor, a multiply per element) and it changes the answer at near ties: ``-12.15 / 0.1``
    is ``-121.49999`` in float32 and rounds to ``-121``, but ``-12.15 * (1 / 0.1)`` is ``-121.5``
    and rounds to the even ``-122``. qedu follows torch so the two agree exactly.

    Args:
        x: real values, finite and not empty; computed in float32.
        scale: positive float (or float tensor broadcasting against ``x``).
        zero_point: int (or integer tensor broadcasting against ``x``) in ``[qmin, qmax]``.
        fmt: the integer format; gives ``qmin`` and ``qmax``.
        rounding: one of ``ROUNDING_MODES`` (see :func:`round_codes`); applied to
            ``x * (1 / scale)`` before the zero point is added.
        generator: randomness for ``rounding="stochastic"``.

    Returns:
        int32 codes of ``x``'s shape (int32 holds every ``IntFormat`` up to 16 bits, and
        ``q - zero_point`` cannot overflow).

    Raises:
        TypeError / ValueError: naming the bad argument (see the module's input checks), also for
            float64 ``x`` beyond float32's range and a ``scale`` whose ``1 / scale`` overflows float32.

    >>> quantize(torch.tensor([-12.15, 0.04, 0.05, 99.0]), 0.1, 0, INT8)
    tensor([-122,    0,    0,  127], dtype=torch.int32)
    """
    fmt = _check_fmt(fmt)
    x = _check_x(x)
    scale = _check_scale(scale, x.shape)
    zero_point = _check_zero_point(zero_point, x.shape, fmt)
    check_choice(rounding, "rounding", ROUNDING_MODES)
    inv_scale = 1.0 / scale  # float32, as torch: inv_scale = 1.0f / scale
    v = round_codes(x * inv_scale, rounding, generator) + zero_point.to(torch.float32)
    return torch.clamp(v, fmt.qmin, fmt.qmax).to(torch.int32)  # clamp in float: huge |x| saturates


def dequantize(q, scale, zero_point) -> torch.Tensor:
    """Real values of integer codes: ``x_hat = (q - zero_point) * scale`` in float32.

    Args:
        q: integer codes (any integer dtype, e.g. from :func:`quantize` or torch's ``int_repr()``).
        scale, zero_point: as given to :func:`quantize`.

    Returns:
        float32 tensor of ``q``'s shape.

    Raises:
        TypeError: if ``q`` is not an integer tensor, or scale/zero_point have the wrong type.
        ValueError: for a non-positive scale, shapes that do not broadcast, or codes whose
            ``(q - zero_point) * scale`` overflows float32 (it would be inf).

    >>> dequantize(torch.tensor([-122, 0, 127], dtype=torch.int32), 0.1, 0)
    tensor([-12.2000,   0.0000,  12.7000])
    """
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        what = f"dtype {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"q must be a tensor of integer codes, got {what}; did you pass x? Quantize it first: "
                        "q = quantize(x, scale, zero_point, fmt).")
    scale = _check_scale(scale, q.shape)
    zero_point = _check_zero_point(zero_point, q.shape, None)
    x_hat = (q.to(torch.int64) - zero_point.to(torch.int64)).to(torch.float32) * scale
    if not bool(torch.isfinite(x_hat).all()):
        raise ValueError(
            f"scale * (q - zero_point) overflows float32 (largest {FLOAT32_MAX:.4g}) for some codes: scale up to "
            f"{float(scale.max()):.4g}, |q - zero_point| up to {int((q.to(torch.int64) - zero_point.to(torch.int64)).abs().max())}. "
            "Use the scale that quantize() was given for these codes, or a smaller one."
        )
    return x_hat


def fake_quantize(x, scale, zero_point, fmt: IntFormat, rounding: str = "half_even",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Snap ``x`` to the quantization grid: ``dequantize(quantize(x, ...), scale, zero_point)``.

    Equals ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)`` (and the
    per-channel version) exactly with ``rounding="half_even"``. Arguments as in :func:`quantize`.

    Returns:
        float32 tensor of ``x``'s shape, every value ``scale * (k - zero_point)`` for an integer
        ``k`` in ``[qmin, qmax]``.

    Raises:
        TypeError / ValueError: as :func:`quantize`, and for a ``scale`` so large that the grid's
            outermost level ``scale * (qmin - zero_point)`` or ``scale * (qmax - zero_point)`` overflows float32.

    >>> fake_quantize(torch.tensor([0.26, -3.0]), 0.1, 0, IntFormat(4))
    tensor([ 0.3000, -0.8000])
    """
    fmt = _check_fmt(fmt)
    x = _check_x(x)
    scale = _check_scale(scale, x.shape)
    zero_point = _check_zero_point(zero_point, x.shape, fmt)
    _check_grid_fits(scale, zero_point, fmt)
    zero_point = zero_point.to(torch.float32)
    # The same arithmetic as dequantize(quantize(...)), kept in float32 (codes are small integers,
    # exact in float32) and done in place on one buffer: no int32 round trip, fewer passes
    # over memory. benchmarks/quantizer_throughput.py measures the difference.
    v = round_codes(x * (1.0 / scale), rounding, generator)  # the only new full-size tensor
    return v.add_(zero_point).clamp_(fmt.qmin, fmt.qmax).sub_(zero_point).mul_(scale)


# ----------------------------------------------------------------------------- error
class QuantizationError(NamedTuple):
    """``mse`` = mean((x - x_hat)^2); ``sqnr_db`` = 10 log10(sum x^2 / sum (x - x_hat)^2)."""

    mse: float
    sqnr_db: float


def quantization_error(x, x_hat) -> QuantizationError:
    """Mean squared error and signal-to-quantization-noise ratio (dB) of a reconstruction.

    ``SQNR = 10 * log10(sum(x^2) / sum((x - x_hat)^2))``: each extra bit of a uniform quantizer
    adds about 6.02 dB. An exact reconstruction gives ``inf`` dB (also for an all-zero ``x``);
    a nonzero error on an all-zero ``x`` gives ``-inf``. Computed in float64.

    Args:
        x: the original values.
        x_hat: the reconstruction, same shape.

    Returns:
        ``QuantizationError(mse, sqnr_db)`` of Python floats.

    Raises:
        ValueError: if the shapes differ, or either is empty or not finite.

    >>> quantization_error(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.5]))
    QuantizationError(mse=0.125, sqnr_db=13.010299956639813)
    """
    x = as_float_tensor(x, "x").to(torch.float64)
    x_hat = as_float_tensor(x_hat, "x_hat").to(torch.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}; "
                         "compare a tensor with its own reconstruction.")
    noise = float(((x - x_hat) ** 2).sum())
    signal = float((x**2).sum())
    mse = noise / x.numel()
    if noise == 0.0:
        return QuantizationError(mse, math.inf)
    if signal == 0.0:
        return QuantizationError(mse, -math.inf)
    return QuantizationError(mse, 10.0 * math.log10(signal / noise))
