"""Quantizers whose range is learned: LSQ's step size and PACT's clipping level.

**LSQ** (Esser et al. 2020, "Learned Step Size Quantization") makes the step ``s`` of a
quantizer a parameter and trains it with the task loss. With ``Qn = -qmin`` and ``Qp = qmax``
(2-bit signed weights: ``Qn = 2``, ``Qp = 1``; 4-bit unsigned activations: ``Qn = 0``, ``Qp = 15``)::

    x_hat = s * round(clamp(x / s, -Qn, Qp))                  # qedu.qat.fake_quantize_ste

    d x_hat / d s = -x/s + round(x/s)    if -Qn < x/s < Qp     # the paper's equation 3, which
                    -Qn                  if x/s <= -Qn         # autograd derives by itself from
                    Qp                   if x/s >= Qp          # the line above and the STE

(At exactly ``x/s = -Qn`` or ``Qp`` autograd's clamp counts the value as inside and gives 0;
both sides of the jump are "right", and the set has measure zero.)

Inside the range the step is pulled towards the values that sit near a rounding boundary
(``|round(x/s) - x/s|`` close to 1/2 matters most); outside, clipped values push the step up.
The paper then scales the step's gradient by ``g = 1 / sqrt(N * Qp)`` (``N`` = number of values
sharing the step: the weights of a channel, the features of one sample), so that the step's
updates are about as large, relative to the step, as the weights' updates relative to the
weights. Where a step starts matters: the paper uses ``2 * mean|x| / sqrt(Qp)``; qedu also
offers the min/max scale and the min-MSE clipping of :func:`qedu.calibration.mse_range`
(``init="mse"``, the default here: at 2 bits it starts where PTQ is already best).

**PACT** (Choi et al. 2018) learns the clipping level ``alpha`` of a ReLU activation::

    y = clamp(x, 0, alpha),    x_hat = fake_quantize(y, scale=alpha / (2**b - 1), zero_point=0)
    d x_hat / d alpha = 1 where x >= alpha, else 0;    d x_hat / d x = 1 where 0 <= x < alpha, else 0

>>> lsq_grad_scale(64, IntFormat(2))  # 64 weights per channel, 2 bits: 1 / sqrt(64 * 1)
0.125
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qedu._validation import check_int
from qedu.calibration import minmax_range, mse_range
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerTensor
from qedu.qat import SCALE_INITS, _check_float, _fake_quantize_ste
from qedu.quantizers import FLOAT32_EPS, _check_fmt, choose_qparams_from_minmax

__all__ = ["INITS", "lsq_grad_scale", "GradScale", "scale_grad", "init_step", "LSQQuantizer", "PACTFunction",
           "pact_quantize", "PACTQuantizer"]

INITS = SCALE_INITS


def _qp(fmt: IntFormat) -> int:
    fmt = _check_fmt(fmt)
    if fmt.qmax < 1:
        raise ValueError(f"{fmt} has qmax = {fmt.qmax}: no positive code, so no step can be learned; "
                         "use at least 2 signed bits or 1 unsigned bit.")
    return fmt.qmax


def lsq_grad_scale(n: int, fmt: IntFormat) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(n * Qp)`` with ``Qp = fmt.qmax``.

    Args:
        n: number of values that share one step (weights per channel, or features per sample).
        fmt: the code format; ``Qp = 2**(b-1) - 1`` for signed, ``2**b - 1`` for unsigned codes.

    Raises:
        TypeError / ValueError: ``n`` not an int >= 1; a format without positive codes.

    >>> round(lsq_grad_scale(100, IntFormat(4, signed=False)), 6)  # 1 / sqrt(100 * 15)
    0.02582
    """
    n = check_int(n, "n", 1)
    return 1.0 / math.sqrt(n * _qp(fmt))


class GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``g`` backward (the forward value is untouched, bit for bit)."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def scale_grad(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` unchanged, but its gradient multiplied by ``g`` (LSQ's gradient scaling).

    >>> s = torch.tensor(0.5, requires_grad=True)
    >>> (3 * scale_grad(s, 0.1)).backward()
    >>> s.grad
    tensor(0.3000)
    """
    return GradScale.apply(x, float(g))


def init_step(x, fmt: IntFormat, granularity=PerTensor(), init: str = "mse") -> torch.Tensor:
    """A starting step for LSQ from data (calibration), one per slice of ``granularity``.

    * ``"lsq"``: the paper's ``2 * mean|x| / sqrt(Qp)``;
    * ``"minmax"``: the step that maps ``[min, max]`` (widened to include 0) onto the codes,
      symmetric for signed formats (:func:`qedu.quantizers.choose_qparams_from_minmax`);
    * ``"mse"``: the same from the min-MSE clipping range (:func:`qedu.calibration.mse_range`).

    Returns:
        float32 steps shaped to broadcast against ``x`` (0-d per tensor, keepdim per channel).

    Raises:
        TypeError / ValueError: ``x`` not a finite float tensor, a format without positive codes,
            an unknown granularity or ``init``, or a step that overflows float32.

    >>> init_step(torch.tensor([-1.0, 0.5, 2.0]), IntFormat(2), init="lsq")  # 2 * (3.5 / 3) / 1
    tensor(2.3333)
    """
    x = _check_float(x, "x").detach().to(torch.float32)
    qp = _qp(fmt)
    if not isinstance(granularity, (PerTensor, PerChannel)):
        raise TypeError(f"granularity must be PerTensor() or PerChannel(axis), got {granularity!r}.")
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {', '.join(map(repr, INITS))}; pick one of those.")
    if init == "lsq":
        step = granularity.reduce(x.double(), lambda rows: rows.abs().mean(dim=1)) * (2 / math.sqrt(qp))  # no overflow
        step = torch.clamp(step, min=FLOAT32_EPS).to(torch.float32)
        if not bool(torch.isfinite(step).all()):
            raise ValueError(f"x is so large that the step 2 * mean|x| / sqrt(Qp) overflows float32 "
                             f"(mean|x| up to {float(x.double().abs().mean()):.4g}); scale x down.")
        return step
    lo, hi = minmax_range(x, granularity) if init == "minmax" else mse_range(x, fmt, granularity, fmt.signed)
    return choose_qparams_from_minmax(lo, hi, fmt, symmetric=fmt.signed)[0]


class LSQQuantizer(nn.Module):
    """Fake-quantizer with a learned step: ``x_hat = s * round(clamp(x / s, qmin, qmax))``, zero point 0.

    Args:
        x_init: data to start the step from (the weight, or calibration activations).
        fmt: signed codes for weights (symmetric), unsigned for non-negative activations.
        granularity: ``PerTensor()`` or ``PerChannel(0)`` (one step per output channel).
        init: ``"mse"``, ``"minmax"`` or ``"lsq"`` (see :func:`init_step`).
        n: values per step for the gradient scale (default: per slice of ``x_init``; pass the
            features per sample for activations).

    Raises:
        TypeError / ValueError: (in ``forward``) ``x`` that is not a float tensor, empty, or holds NaN/inf.

    >>> q = LSQQuantizer(torch.tensor([-1.0, 0.4, 1.0]), IntFormat(2), init="minmax")  # step 1 / 1.5
    >>> [round(v, 4) for v in q(torch.tensor([-1.0, 0.4, 1.0])).tolist()]  # -1.5 steps rounds to -2 (half to even)
    [-1.3333, 0.6667, 0.6667]
    """

    def __init__(self, x_init, fmt: IntFormat, granularity=PerTensor(), init: str = "mse", n: int | None = None):
        super().__init__()
        self.fmt, self.granularity = _check_fmt(fmt), granularity
        step = init_step(x_init, fmt, granularity, init)
        self.scale = nn.Parameter(step.clone())
        n_steps = granularity.num_params(tuple(x_init.shape))
        self.g = lsq_grad_scale(x_init.numel() // n_steps if n is None else n, fmt)

    def qparams(self, x=None):
        """``(scale, zero_point)`` now, without gradients (``x`` is ignored: the step is learned, not measured)."""
        scale = torch.clamp(self.scale.detach(), min=FLOAT32_EPS)
        return scale, torch.zeros(scale.shape, dtype=torch.int32)

    def forward(self, x):
        _check_float(x, "x")  # NaN/inf would pass the fast path silently: refuse them, as fake_quantize_ste does
        s = torch.clamp(scale_grad(self.scale, self.g), min=FLOAT32_EPS)  # a step never reaches 0
        return _fake_quantize_ste(x, s, 0, self.fmt)  # qedu.qat.fake_quantize_ste, minus the input checks

    def extra_repr(self) -> str:
        return f"{self.fmt}, {self.granularity!r}, g={self.g:.4g}"


class PACTFunction(torch.autograd.Function):
    """PACT: ``fake_quantize(clamp(x, 0, alpha), alpha / qmax, 0)`` with PACT's hand-written gradients."""

    @staticmethod
    def forward(ctx, x, alpha, fmt):
        ctx.save_for_backward(x, alpha)
        y = torch.minimum(x.clamp(min=0), alpha)  # clamp(x, 0, alpha)
        return _fake_quantize_ste(y, alpha / fmt.qmax, 0, fmt)  # forward only: no gradient is recorded here

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        grad_x = grad * ((x >= 0) & (x < alpha))  # STE inside [0, alpha), flat outside
        grad_alpha = (grad * (x >= alpha)).sum().reshape(alpha.shape)  # clipped values move with alpha
        return grad_x, grad_alpha, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """PACT's quantizer: clip ``x`` to ``[0, alpha]``, then ``2**b`` levels from 0 to ``alpha``.

    Raises:
        TypeError / ValueError: non-float ``x``/``alpha``, ``alpha`` not one positive number,
            a signed ``fmt`` (PACT clips at 0: use unsigned codes).

    >>> pact_quantize(torch.tensor([-1.0, 0.4, 3.0]), torch.tensor(2.0), IntFormat(2, signed=False))
    tensor([0.0000, 0.6667, 2.0000])
    """
    x = _check_float(x, "x")
    alpha = _check_float(alpha, "alpha")
    fmt = _check_fmt(fmt)
    if fmt.signed or fmt.qmin != 0:
        raise ValueError(f"PACT clips to [0, alpha], so fmt must be unsigned with qmin 0, got {fmt}; use "
                         f"IntFormat({fmt.bits}, signed=False).")
    if alpha.numel() != 1 or not bool(alpha > 0):
        raise ValueError(f"alpha must be one positive number, got {alpha.tolist()}.")
    return PACTFunction.apply(x, alpha.to(x.dtype), fmt)


class PACTQuantizer(nn.Module):
    """An activation quantizer with a learned clipping level ``alpha`` (PACT), started from data.

    ``alpha`` starts at ``qmax * init_step(x_init, fmt, init=init)`` (the calibrated range).
    ``n`` is accepted for symmetry with :class:`LSQQuantizer` and unused (PACT scales no gradient).
    """

    def __init__(self, x_init, fmt: IntFormat, init: str = "mse", n: int | None = None):
        super().__init__()
        self.fmt = _check_fmt(fmt)
        if fmt.signed:
            raise ValueError("PACT clips at 0, but these inputs go below 0 (signed codes were chosen); use "
                             "act_method='lsq' for them.")
        self.alpha = nn.Parameter(init_step(x_init, fmt, PerTensor(), init) * fmt.qmax)

    def qparams(self, x=None):
        """``(scale, zero_point)`` = ``(alpha / qmax, 0)``, without gradients (``x`` is ignored)."""
        alpha = torch.clamp(self.alpha.detach(), min=FLOAT32_EPS)
        return alpha / self.fmt.qmax, torch.tensor(0, dtype=torch.int32)

    def forward(self, x):
        _check_float(x, "x")  # NaN in, NaN out would be silent: refuse it
        return PACTFunction.apply(x, torch.clamp(self.alpha, min=FLOAT32_EPS), self.fmt)

    def extra_repr(self) -> str:
        return f"{self.fmt}, alpha={self.alpha.item():.4g}"
