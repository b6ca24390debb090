"""A statistical drift test for a deployed quantized model: has the activations' *distribution* moved?

:class:`qedu.security.RangeMonitor` asks whether the inputs still fit the grids (clipping,
under-use). It is blind to a shift that stays inside the ranges: noise, fading. A drift test
compares the whole histogram instead. The natural bins for a quantized layer are its own grid:
each layer's input, in codes ``round(x / scale) + zero_point``, with one extra bin below
``qmin`` and one above ``qmax`` for clipped values. The population stability index (PSI, a
credit-scoring staple) between the calibration histogram ``e`` and a batch's histogram ``a``::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)          (shares, each floored at 1e-4)

It is 0 for identical histograms and grows with any change of shape. The usual reading: below
0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one. :class:`DriftMonitor` raises an
alarm when any layer's PSI exceeds ``threshold`` (default 0.2). :func:`false_alarm_rate` runs
any monitor on random clean batches: an alarm rule is only as good as its silence on clean data.

>>> round(psi(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])), 6)
0.0
>>> round(psi(torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])), 4)  # (0.4 ln 1.8) + (-0.4 ln 0.2)
0.8789
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qedu._validation import FLOAT32_MAX, as_float32, as_float_tensor, check_int, check_module, check_real, check_seed
from qedu.calibration import record_activations
from qedu.ptq import QuantLayer

__all__ = ["psi", "code_histogram", "DriftReport", "DriftMonitor", "false_alarm_rate"]

FLOOR = 1e-4  # an empty bin would make ln(a / e) infinite


def psi(expected, actual, *, floor: float = FLOOR) -> float:
    """Population stability index between two histograms (counts or shares; each is normalised).

    ``PSI = sum_i (a_i - e_i) ln(a_i / e_i)`` with shares floored at ``floor``. Symmetric in its
    arguments, >= 0, 0 only for equal histograms.

    Raises:
        ValueError: NaN/inf or negative counts, a zero total, different numbers of bins, or
            ``floor`` outside [1e-12, 1) (0 would make an empty bin's ``ln(a / e)`` infinite).
    """
    e = as_float_tensor(expected, "expected").double().flatten()
    a = as_float_tensor(actual, "actual").double().flatten()
    floor = check_real(floor, "floor", 1e-12, 1, hi_open=True, example="1e-4")  # a subnormal floor overflows a / e
    if e.shape != a.shape:
        raise ValueError(f"expected and actual need the same bins, got {len(e)} and {len(a)} bins.")
    for name, h in (("expected", e), ("actual", a)):
        if bool((h < 0).any()) or float(h.max()) == 0:
            raise ValueError(f"{name} must hold non-negative counts with a positive total, got {h.tolist()!r:.80}.")
    e, a = e / e.max(), a / a.max()  # first to [0, 1]: a sum of counts near 1e308 would overflow to inf
    e, a = (e / e.sum()).clamp(min=floor), (a / a.sum()).clamp(min=floor)
    return float(((a - e) * torch.log(a / e)).sum())


def code_histogram(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Counts of ``x`` per code of the grid, plus a bin below ``qmin`` and one above ``qmax``.

    Returns ``qmax - qmin + 3`` counts: ``[clipped low, qmin, ..., qmax, clipped high]``.

    Raises:
        ValueError: ``x`` empty, NaN/inf or beyond float32; ``scale`` not one number > 0 whose
            inverse is finite in float32; ``zero_point`` not a finite integer; ``qmin >= qmax`` or
            more than ``2**16 + 1`` codes (a 16-bit grid).

    >>> code_histogram(torch.tensor([-1.0, 0.0, 0.1, 0.14, 9.0]), 0.1, 0, 0, 3).tolist()
    [1.0, 1.0, 2.0, 0.0, 0.0, 1.0]
    """
    x = as_float32(as_float_tensor(x, "x"), "x").flatten()
    scale_t = as_float_tensor(scale, "scale")
    if scale_t.numel() != 1:
        raise ValueError(f"scale must be one number (a per-tensor grid), got {scale_t.numel()} values.")
    scale = check_real(scale_t, "scale", 1 / FLOAT32_MAX, FLOAT32_MAX, lo_open=True, example="0.05")  # 1/scale finite
    zero_point = check_real(zero_point, "zero_point", example="0")
    if not zero_point.is_integer():
        raise ValueError(f"zero_point must be an integer code, got {zero_point!r}; round it.")
    qmin, qmax = check_int(qmin, "qmin"), check_int(qmax, "qmax")
    if not 0 < qmax - qmin <= 2**16:
        raise ValueError(f"need qmin < qmax and at most 2**16 + 1 codes, got qmin={qmin}, qmax={qmax}; "
                         "pass the grid's fmt.qmin and fmt.qmax.")
    codes = torch.round(x * (1.0 / torch.tensor(scale, dtype=torch.float32))) + zero_point
    codes = codes.clamp(qmin - 1, qmax + 1) - (qmin - 1)  # 0 = clipped low, ..., qmax - qmin + 2 = clipped high
    return torch.bincount(codes.long(), minlength=qmax - qmin + 3).double()


def _grids(quantized: nn.Module) -> dict:
    check_module(quantized, "quantized")
    grids = {name: m.act for name, m in quantized.named_modules() if isinstance(m, QuantLayer) and m.act is not None}
    if not grids:
        raise TypeError("quantized must be a model from qedu.ptq.quantize_model with act_bits set (no activation grid).")
    if not all(g.calibrated for g in grids.values()):
        raise ValueError("quantized has activation quantizers that were never calibrated; use qedu.ptq.quantize_model "
                         "(or calibrate and convert a prepared model) first.")
    return grids


@dataclass(frozen=True)
class DriftReport:
    """Per layer PSI of one batch against the calibration histogram, and the layers over ``threshold``."""

    psi: dict
    alarms: tuple
    threshold: float

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def summary(self) -> str:
        worst = max(self.psi, key=self.psi.get)
        head = "ALARM" if self.alarm else "ok"
        return f"{head}: largest PSI {self.psi[worst]:.3f} in {worst} (threshold {self.threshold})"


class DriftMonitor:
    """Compare each incoming batch's activation histograms (in grid codes) with calibration's.

    Args:
        quantized: a model from :func:`qedu.ptq.quantize_model` with quantized activations.
        x_calib: the calibration images (the reference histograms).
        threshold: PSI above which a layer raises an alarm, > 0 (default 0.2).
    """

    def __init__(self, quantized: nn.Module, x_calib, *, threshold: float = 0.2):
        threshold = check_real(threshold, "threshold", 0, lo_open=True, example="0.2, a moderate-to-major shift")
        self.quantized, self.threshold = quantized, threshold
        self.grids = _grids(quantized)
        self.reference = self._histograms(x_calib)

    def _histograms(self, x) -> dict:
        acts = record_activations(self.quantized, x, names=list(self.grids))  # each layer's input, before its quantizer
        return {n: code_histogram(acts[n], g.scale, g.zero_point, g.fmt.qmin, g.fmt.qmax) for n, g in self.grids.items()}

    def check(self, x) -> DriftReport:
        """PSI of batch ``x`` per layer, and which layers exceed the threshold."""
        hist = self._histograms(x)
        values = {n: psi(self.reference[n], hist[n]) for n in self.grids}
        return DriftReport(values, tuple(n for n, v in values.items() if v > self.threshold), self.threshold)


def false_alarm_rate(monitor, x_clean, *, batch_size: int = 64, n_batches: int = 100, seed: int = 0) -> float:
    """Share of random clean batches on which ``monitor.check(batch).alarm`` is True.

    Each batch is ``batch_size`` images drawn without replacement from ``x_clean`` (a fresh draw
    per batch, seeded). Works for :class:`DriftMonitor` and :class:`qedu.security.RangeMonitor`.
    """
    if not callable(getattr(monitor, "check", None)):
        raise TypeError(f"monitor must have a check(x) method (DriftMonitor, RangeMonitor), got {type(monitor).__name__}.")
    x_clean = as_float_tensor(x_clean, "x_clean")
    batch_size = check_int(batch_size, "batch_size", 1, len(x_clean))
    n_batches = check_int(n_batches, "n_batches", 1)
    g = torch.Generator().manual_seed(check_seed(seed))
    alarms = sum(bool(monitor.check(x_clean[torch.randperm(len(x_clean), generator=g)[:batch_size]]).alarm)
                 for _ in range(n_batches))
    return alarms / n_batches
