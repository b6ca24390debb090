"""Calibration: choosing a quantizer's clipping range ``[lo, hi]`` from data.

A weight tensor is known before the model runs, so its range can be read off directly. An
activation depends on the input, so we run a few **calibration** samples through the model,
*observe* each activation, and pick a range that will hold for inputs we have not seen. Five
ways to pick it, from the simplest to the most careful::

    min/max          lo, hi = min(x), max(x)                    nothing clips; one outlier stretches the grid
    moving average   lo <- lo + c * (min(x_batch) - lo)         min/max smoothed over batches (torch's default for QAT)
    percentile       lo, hi = the (100-p)th and p-th percentiles  clips the rarest values
    MSE              the [a*lo, a*hi] that minimises mean((x - x_hat)^2) over a grid of a in (0, 1]
    KL (entropy)     the threshold whose quantized histogram stays closest to the original (TensorRT)

Every method returns a range; :func:`qedu.quantizers.choose_qparams_from_minmax` turns it into
``scale`` and ``zero_point`` (widening it to include 0, as torch does). Clipping trades a
large error on a few values (clipping error) for a finer grid for all the others (rounding
error); :func:`clipping_error` measures both.

The *observers* wrap these functions in torch's style: ``observer(x)`` records statistics and
returns ``x`` unchanged, ``observer.calculate_qparams()`` gives ``(scale, zero_point)``.
``MinMaxObserver`` and ``MovingAverageMinMaxObserver`` (per tensor and per channel) reproduce
``torch.ao.quantization``'s observers exactly (``tests/test_calibration.py``). :func:`observing`
attaches observers to a model's layers with forward hooks and always removes them.

>>> obs = MinMaxObserver(UINT8, symmetric=False)
>>> _ = obs(torch.tensor([-1.0, 0.5, 2.0]))
>>> obs.calculate_qparams()
(tensor(0.0118), tensor(85, dtype=torch.int32))
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_bool, check_int, run_model, to_model_dtype
from qedu.formats import UINT8, IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.quantizers import choose_qparams_from_minmax, fake_quantize

__all__ = [
    "minmax_range", "percentile_range", "mse_range", "kl_range", "clipping_error", "ClippingError",
    "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver", "MSEObserver", "KLObserver",
    "OBSERVERS", "make_observer", "observing", "record_activations",
]


# ----------------------------------------------------------------------------- input checks
def _check_x(x, name: str = "x") -> torch.Tensor:
    return as_float32(as_float_tensor(x, name).detach(), name)  # float64 beyond float32's range: a clear error


def _check_granularity(granularity, allow_group: bool = True):
    kinds = (PerTensor, PerChannel, PerGroup) if allow_group else (PerTensor, PerChannel)
    if not isinstance(granularity, kinds):
        names = "PerTensor(), PerChannel(axis)" + (" or PerGroup(group_size)" if allow_group else "")
        raise TypeError(f"granularity must be {names}, got {type(granularity).__name__} {granularity!r}.")
    return granularity


def _check_fmt(fmt) -> IntFormat:
    if not isinstance(fmt, IntFormat):
        raise TypeError(f"fmt must be an IntFormat such as qedu.formats.UINT8 or IntFormat(4), got {fmt!r}.")
    return fmt


def _check_percentile(percentile) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise TypeError(f"percentile must be a number such as 99.9, got {type(percentile).__name__} {percentile!r}.")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], e.g. 99.9 (100 is min/max), got {percentile}.")
    return float(percentile)


# ----------------------------------------------------------------------------- the range rules
def minmax_range(x, granularity=PerTensor()) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest range that holds every value: ``lo, hi = min(x), max(x)`` per slice.

    Returns ``(lo, hi)`` shaped to broadcast against ``x`` (0-d per tensor, keepdim per channel).

    >>> minmax_range(torch.tensor([[-1.0, 3.0], [2.0, 5.0]]), PerChannel(0))
    (tensor([[-1.],
            [ 2.]]), tensor([[3.],
            [5.]]))
    """
    x = _check_x(x)
    granularity = _check_granularity(granularity)
    return granularity.reduce(x, lambda rows: rows.amin(dim=1)), granularity.reduce(x, lambda rows: rows.amax(dim=1))


def percentile_range(x, percentile: float = 99.99, granularity=PerTensor(), symmetric: bool = False):
    """Clip the rarest values: the range between the ``(100-p)``-th and ``p``-th percentiles.

    * ``symmetric=False``: ``lo = quantile(x, 1 - p/100)``, ``hi = quantile(x, p/100)`` -- each
      tail loses ``100 - p`` percent of the values.
    * ``symmetric=True``: ``hi = quantile(|x|, p/100)``, ``lo = -hi`` -- the two tails together
      lose ``100 - p`` percent (a symmetric grid needs one magnitude, not two ends).

    Quantiles interpolate linearly between neighbouring values (``torch.quantile`` and
    ``np.percentile``'s default). ``percentile=100`` gives min/max.

    >>> percentile_range(torch.arange(101.0), 90.0)
    (tensor(10.), tensor(90.))
    >>> percentile_range(torch.tensor([-4.0, -1.0, 0.0, 2.0]), 100.0, symmetric=True)
    (tensor(-4.), tensor(4.))
    """
    x = _check_x(x)
    q = _check_percentile(percentile) / 100.0
    granularity = _check_granularity(granularity)
    check_bool(symmetric, "symmetric")
    if symmetric:
        hi = granularity.reduce(x, lambda rows: _quantile(rows.abs(), q))
        return -hi, hi
    lo = granularity.reduce(x, lambda rows: _quantile(rows, 1.0 - q))
    hi = granularity.reduce(x, lambda rows: _quantile(rows, q))
    return lo, hi


def _quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile, interpolated in float64 (float32 loses the position between two values).

    The same numbers as ``torch.quantile(rows.double(), q, dim=1)`` (linear interpolation), but
    without its limit of 2**24 values per row, which percentile calibration of a large layer hits:
    the lower neighbour comes from ``kthvalue`` (a selection, no full sort), the upper one is the
    same value if it occurs often enough, else the smallest value above it; then
    ``lerp(below, above, position - floor(position))`` with ``position = q * (n - 1)``.
    """
    n = rows.shape[1]
    position = torch.tensor(q, dtype=torch.float64) * (n - 1)  # float64, as torch.quantile computes it
    below_i = int(torch.floor(position))  # 0-based rank of the lower neighbour
    below = rows.kthvalue(below_i + 1, dim=1, keepdim=True).values  # (n_slices, 1): the (below_i + 1)-th smallest
    above = below
    if below_i + 1 < n:  # the next rank: a tie with `below`, or the smallest value above it
        n_at_most = (rows <= below).sum(dim=1, keepdim=True)  # how many ranks `below` covers
        next_up = torch.where(rows > below, rows, torch.inf).amin(dim=1, keepdim=True)
        above = torch.where(n_at_most > below_i + 1, below, next_up)
    below, above = below.squeeze(1).double(), above.squeeze(1).double()
    weight = position - below_i
    return torch.lerp(below, above, weight).to(torch.float32)


def mse_range(x, fmt: IntFormat, granularity=PerTensor(), symmetric: bool = False, n_grid: int = 100):
    """The clipping range with the smallest quantization error, found by a grid search.

    Candidates shrink the min/max range by ``a = k / n_grid`` for ``k = 1 .. n_grid``:
    ``[a * lo, a * hi]`` (``[-a * max|x|, a * max|x|]`` if ``symmetric``). For each candidate
    ``x_hat = fake_quantize(x, *choose_qparams_from_minmax(a * lo, a * hi, fmt, symmetric))``;
    each slice keeps the ``a`` with the smallest ``mean((x - x_hat)^2)`` (the smallest ``a`` on
    a tie). ``a = 1`` is min/max, so the result is never worse than min/max.

    Args:
        x: the values to quantize. fmt: the integer format.
        granularity: one range per tensor, per channel or per group.
        symmetric: search symmetric ranges (for a symmetric grid).
        n_grid: number of candidates (100 is a 1% step).

    Returns:
        ``(lo, hi)``, shaped like :func:`minmax_range`'s.

    >>> x = torch.randn(10000, generator=torch.Generator().manual_seed(0))  # max |x| = 4.34
    >>> mse_range(x, IntFormat(4), symmetric=True)
    (tensor(-2.6060), tensor(2.6060))
    """
    x = _check_x(x)
    fmt = _check_fmt(fmt)
    granularity = _check_granularity(granularity)
    check_bool(symmetric, "symmetric")
    n_grid = check_int(n_grid, "n_grid", 1)
    rows = granularity.to_rows(x)  # one row per slice: (n_slices, slice_len)
    lo0, hi0 = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)  # (n_slices, 1)
    if symmetric:
        hi0 = torch.maximum(-lo0, hi0)
        lo0 = -hi0
    alphas = torch.arange(1, n_grid + 1, dtype=torch.float32) / n_grid  # (K,)
    errors = []
    chunk = max(1, 1_000_000 // rows.numel())  # candidates tried at once: at most ~1M values (4 MB)
    for a in alphas.split(chunk):
        a = a.reshape(-1, 1, 1)  # (k,) -> (k, 1, 1): candidate, slice, value
        scale, zero_point = choose_qparams_from_minmax(a * lo0, a * hi0, fmt, symmetric)  # (k, n_slices, 1)
        x_hat = fake_quantize(rows.expand(len(a), -1, -1), scale, zero_point, fmt)  # (k, n_slices, slice_len)
        errors.append((rows - x_hat).pow(2).mean(dim=2))  # (k, n_slices)
    best = torch.cat(errors).argmin(dim=0)  # (n_slices,): first minimum = the smallest a on a tie
    a = alphas[best]
    lo, hi = a * lo0.flatten(), a * hi0.flatten()  # (n_slices,)
    return granularity.from_rows(lo, x.shape), granularity.from_rows(hi, x.shape)


def _kl_divergence(p: np.ndarray, q: np.ndarray, floor: float = 1e-10) -> float:
    """KL(p || q) of two histograms, normalised here. Where p > 0 but q = 0 (clipped values piled
    into an empty bin) q gets the tiny probability ``floor`` so the divergence stays finite (MXNet
    and TVM smooth the same way)."""
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    q = np.maximum(q[mask], floor)
    return float(np.sum(p[mask] * np.log(p[mask] / q)))


def kl_range(x, fmt: IntFormat, symmetric: bool = False, n_bins: int = 2048):
    """TensorRT's entropy calibration: the threshold that loses the least information.

    Histogram the magnitudes ``|x|`` (or ``x`` itself if it is never negative) into ``n_bins``
    bins over ``[0, max]``. For each candidate threshold ``T = edge[i]``, ``i = n_levels ..
    n_bins``, where ``n_levels`` is the number of grid steps covering ``[0, T]``:

    1. ``P`` = the first ``i`` bins, with every count beyond ``T`` added to the last bin (clipping);
    2. ``Q`` = the same ``i`` bins merged into ``n_levels`` groups (quantization), each group's
       count spread evenly over its non-empty bins;
    3. keep the ``T`` with the smallest ``KL(P || Q) = sum P log(P / Q)`` (the largest on a tie).

    ``n_levels`` is ``fmt.levels`` when the data is non-negative and the grid affine (all codes
    cover ``[0, T]``), else ``fmt.levels // 2`` (half the codes are for negative values).
    The range is ``[0, T]`` for non-negative data, else ``[-T, T]`` (clamped to the data's own
    range unless ``symmetric``). The spike of exact zeros after a ReLU stays in the histogram:
    the ratio between it and the clipped mass is what stops a degenerate answer on data with
    few distinct values, such as pixels (k / 16). This is not torch's ``HistogramObserver``,
    which minimises the L2 error over bin ranges instead. The smallest threshold is ``n_levels``
    bins: with one value far beyond the others, ``n_bins`` limits how much can be clipped.

    >>> x = torch.cat([torch.rand(2000, generator=torch.Generator().manual_seed(0)), torch.tensor([30.0])])
    >>> lo, hi = kl_range(x, IntFormat(4, signed=False))
    >>> lo.item(), round(hi.item(), 2)
    (0.0, 1.01)
    """
    x = _check_x(x).flatten()
    fmt = _check_fmt(fmt)
    check_bool(symmetric, "symmetric")
    n_bins = check_int(n_bins, "n_bins", 2)
    nonneg = bool(x.min() >= 0)
    values = (x if nonneg else x.abs()).double().numpy()
    top = float(values.max())
    if top == 0.0:
        return torch.tensor(0.0), torch.tensor(0.0)
    n_levels = max(fmt.levels if nonneg and not symmetric else fmt.levels // 2, 1)
    hist, edges = np.histogram(values, bins=n_bins, range=(0.0, top))
    best_i, best_kl = n_bins, math.inf
    for i in range(min(n_levels, n_bins), n_bins + 1):
        p = hist[:i].astype(np.float64)
        p[-1] += hist[i:].sum()  # 1. clip: outliers pile up in the last bin
        group = np.arange(i) * n_levels // i  # 2. quantize: bin j -> group (n_levels groups)
        nonempty = hist[:i] > 0
        group_sum = np.bincount(group, weights=hist[:i], minlength=n_levels)
        group_n = np.bincount(group, weights=nonempty, minlength=n_levels)
        q = np.where(nonempty, group_sum[group] / np.maximum(group_n[group], 1), 0.0)
        if q.sum() == 0:
            continue  # no value below T at all: nothing to compare
        kl = _kl_divergence(p, q)
        if kl <= best_kl:  # 3. '<=' keeps the largest threshold on a tie
            best_i, best_kl = i, kl
    t = float(edges[best_i])
    if nonneg:
        return torch.tensor(0.0), torch.tensor(t, dtype=torch.float32)
    if symmetric:
        return torch.tensor(-t, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    return torch.clamp(torch.tensor(-t), min=x.min()), torch.clamp(torch.tensor(t), max=x.max())


# ----------------------------------------------------------------------------- clipping vs rounding
class ClippingError(NamedTuple):
    """Where the quantization error comes from: ``total = clipping + rounding`` (mean squared).

    ``clipping``: the values outside the representable range, error ``(x - x_hat)^2`` summed
    over them, divided by ``x.numel()``; ``rounding``: the same for the values inside;
    ``clipped_fraction``: the share of values outside.
    """

    total: float
    clipping: float
    rounding: float
    clipped_fraction: float


def clipping_error(x, lo, hi, fmt: IntFormat, symmetric: bool = False) -> ClippingError:
    """Split the mean squared quantization error of ``x`` on the range ``[lo, hi]`` in two.

    The grid is ``choose_qparams_from_minmax(lo, hi, fmt, symmetric)``; a value *clips* when it
    lies beyond the grid's outermost levels by more than half a step (it would round to a level
    that is not there). Per tensor.

    >>> e = clipping_error(torch.tensor([0.0, 0.5, 1.0, 9.0]), 0.0, 1.0, IntFormat(2, signed=False))
    >>> round(e.clipping, 3), e.clipped_fraction
    (16.0, 0.25)
    """
    x = _check_x(x)
    fmt = _check_fmt(fmt)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    scale, zero_point = choose_qparams_from_minmax(lo, hi, fmt, symmetric)
    x_hat = fake_quantize(x, scale, zero_point, fmt)
    grid_lo, grid_hi = (fmt.qmin - zero_point) * scale, (fmt.qmax - zero_point) * scale
    clipped = (x < grid_lo - scale / 2) | (x > grid_hi + scale / 2)
    sq = (x.double() - x_hat.double()).pow(2)
    n = x.numel()
    return ClippingError(float(sq.sum()) / n, float(sq[clipped].sum()) / n, float(sq[~clipped].sum()) / n,
                         float(clipped.double().mean()))


# ----------------------------------------------------------------------------- observers
class Observer(nn.Module):
    """Base of every observer: ``forward`` records, ``clipping_range`` decides, ``calculate_qparams`` converts.

    An observer sees one batch at a time. It works on the *rows table* of each batch (one row
    per slice, see :mod:`qedu.granularity`), so batches of different sizes combine naturally,
    and shapes its results to broadcast against the batches it saw (per channel along
    ``axis=1`` of an ``(N, C, H, W)`` activation: shape ``(1, C, 1, 1)``).

    Args:
        fmt: the format of the codes (default ``UINT8``, as torch's observers).
        symmetric: a grid symmetric around 0 (``False``: affine, torch's default).
        granularity: ``PerTensor()`` or ``PerChannel(axis)``.
    """

    def __init__(self, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor()):
        super().__init__()
        self.fmt = _check_fmt(fmt)
        self.symmetric = check_bool(symmetric, "symmetric")
        self.granularity = _check_granularity(granularity, allow_group=False)
        self.n_batches = 0
        self._shape = None  # shape of the first batch: where the results must broadcast
        self._range_cache = None  # searches (MSE, KL) are slow: computed once per data seen

    def forward(self, x):
        """Record the statistics of ``x`` and return ``x`` itself (refuses NaN/inf and empty batches)."""
        values = _check_x(x, "x")  # one NaN would silently poison the range: refuse it, name the count
        rows = self.granularity.to_rows(values)  # (...) -> (n_slices, slice_len)
        if self._shape is None:
            self._shape, self._n_slices = tuple(values.shape), rows.shape[0]
        elif rows.shape[0] != self._n_slices:
            raise ValueError(f"this observer saw batches of shape {self._shape} and now {tuple(values.shape)} "
                             "with a different number of channels; use one observer per activation.")
        self._record(rows)
        self.n_batches += 1
        self._range_cache = None  # new data: the range must be recomputed
        return x

    def _record(self, rows: torch.Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _unrows(self, stat: torch.Tensor) -> torch.Tensor:
        """Per-slice statistics ``(n_slices,)`` back to a shape that broadcasts against the batches."""
        return self.granularity.from_rows(stat.flatten(), self._shape)

    def clipping_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen range ``(lo, hi)``, shaped to broadcast against the observed batches."""
        if self.n_batches == 0:
            raise RuntimeError(f"{type(self).__name__} has not seen any data yet; run calibration data through it "
                               "first (observer(x), or calibrate(prepared, x_calib)).")
        if self._range_cache is None:
            lo, hi = self._range()
            self._range_cache = (self._unrows(lo), self._unrows(hi))
        return self._range_cache

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the clipping range, via ``choose_qparams_from_minmax``."""
        lo, hi = self.clipping_range()
        return choose_qparams_from_minmax(lo, hi, self.fmt, self.symmetric)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, symmetric={self.symmetric}, granularity={self.granularity}, n_batches={self.n_batches}"


class MinMaxObserver(Observer):
    """Running min and max: ``lo = min(lo, min(x))``, ``hi = max(hi, max(x))``.

    Equals ``torch.ao.quantization.MinMaxObserver`` (per tensor) and
    ``PerChannelMinMaxObserver`` (``granularity=PerChannel(axis)``, torch's ``ch_axis``) exactly.

    >>> obs = MinMaxObserver(granularity=PerChannel(1))
    >>> _ = obs(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    >>> obs.clipping_range()
    (tensor([[ 1., -2.]]), tensor([[3.0000, 0.5000]]))
    """

    def _record(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)  # (n_slices,)
        if self.n_batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)

    def _range(self):
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(Observer):
    """Min and max averaged over batches: ``lo <- lo + c * (min(x) - lo)`` (the first batch sets them).

    With a small ``averaging_constant`` ``c`` (torch's default 0.01) one extreme batch barely
    moves the range; with ``c = 1`` only the last batch counts. Equals torch.ao's
    ``MovingAverageMinMaxObserver`` / ``MovingAveragePerChannelMinMaxObserver`` exactly.

    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs(torch.tensor([0.0, 2.0])); _ = obs(torch.tensor([0.0, 4.0]))
    >>> obs.clipping_range()[1]
    tensor(3.)
    """

    def __init__(self, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor(), *,
                 averaging_constant: float = 0.01):
        super().__init__(fmt, symmetric, granularity)
        c = averaging_constant
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0.0 < float(c) <= 1.0:
            raise ValueError(f"averaging_constant must be a number in (0, 1], e.g. 0.01, got {c!r}.")
        self.averaging_constant = float(c)

    def _record(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)  # (n_slices,)
        if self.n_batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)

    def _range(self):
        return self.min_val, self.max_val


class _ValueObserver(Observer):
    """An observer that keeps every value it sees (as rows), for rules that need the whole distribution.

    Fine for a lesson's few hundred thousand activations; real toolkits keep a histogram instead.
    """

    def _record(self, rows):
        if self.n_batches == 0:
            self._values = []
        self._values.append(rows.clone())

    def values(self) -> torch.Tensor:
        """Everything observed, as the rows table ``(n_slices, n_values)``."""
        return torch.cat(self._values, dim=1)

    def _rows_granularity(self):
        return PerTensor() if isinstance(self.granularity, PerTensor) else PerChannel(0)


class PercentileObserver(_ValueObserver):
    """Clip the rarest values: :func:`percentile_range` of everything observed.

    >>> obs = PercentileObserver(percentile=90.0)
    >>> _ = obs(torch.arange(101.0))
    >>> obs.clipping_range()
    (tensor(10.), tensor(90.))
    """

    def __init__(self, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor(), *,
                 percentile: float = 99.99):
        super().__init__(fmt, symmetric, granularity)
        self.percentile = _check_percentile(percentile)

    def _range(self):
        return percentile_range(self.values(), self.percentile, self._rows_granularity(), self.symmetric)


class MSEObserver(_ValueObserver):
    """The clipping range with the smallest quantization MSE: :func:`mse_range` of everything observed.

    >>> obs = MSEObserver(IntFormat(4, signed=False))
    >>> _ = obs(torch.randn(10000, generator=torch.Generator().manual_seed(0)).relu())  # max 4.34
    >>> round(obs.clipping_range()[1].item(), 2)
    3.04
    """

    def __init__(self, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor(), *, n_grid: int = 100):
        super().__init__(fmt, symmetric, granularity)
        self.n_grid = check_int(n_grid, "n_grid", 1)

    def _range(self):
        return mse_range(self.values(), self.fmt, self._rows_granularity(), self.symmetric, self.n_grid)


class KLObserver(_ValueObserver):
    """TensorRT's entropy calibration: :func:`kl_range` of everything observed (per tensor only).

    >>> obs = KLObserver(IntFormat(4, signed=False))
    >>> _ = obs(torch.cat([torch.rand(2000, generator=torch.Generator().manual_seed(0)), torch.tensor([30.0])]))
    >>> round(obs.clipping_range()[1].item(), 2)
    1.01
    """

    def __init__(self, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor(), *, n_bins: int = 2048):
        if not isinstance(granularity, PerTensor):
            raise ValueError(f"KLObserver works per tensor (one histogram), got granularity={granularity!r}; "
                             "use PerTensor(), or MSEObserver for per-channel ranges.")
        super().__init__(fmt, symmetric, granularity)
        self.n_bins = check_int(n_bins, "n_bins", 2)

    def _range(self):
        return kl_range(self.values(), self.fmt, self.symmetric, self.n_bins)


OBSERVERS: dict[str, type] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}


def make_observer(method: str, fmt: IntFormat = UINT8, symmetric: bool = False, granularity=PerTensor(),
                  **options) -> Observer:
    """The observer for a calibration ``method`` (a key of ``OBSERVERS``), e.g. ``make_observer("percentile",
    percentile=99.9)``; ``options`` go to its constructor.

    >>> make_observer("mse", IntFormat(4, signed=False))
    MSEObserver(fmt=uint4, symmetric=False, granularity=PerTensor(), n_batches=0)
    """
    if method not in OBSERVERS:
        raise ValueError(f"method={method!r} is not a calibration method; use one of {', '.join(map(repr, OBSERVERS))}.")
    return OBSERVERS[method](fmt, symmetric, granularity, **options)


# ----------------------------------------------------------------------------- attaching observers to a model
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _select_modules(model: nn.Module, names, layer_types) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    modules = dict(model.named_modules())
    if names is None:
        return {n: m for n, m in modules.items() if isinstance(m, layer_types)}
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        valid = [n for n in modules if n]
        raise ValueError(f"names holds {unknown}, which are not modules of this model; choose from {valid}.")
    return {n: modules[n] for n in names}


def _input_hook(observer):
    def hook(module, args):
        observer(args[0])  # returning None leaves the input unchanged
    return hook


def _output_hook(observer):
    def hook(module, args, output):
        observer(output)  # returning None leaves the output unchanged
    return hook


@contextmanager
def observing(model: nn.Module, observer_factory: Callable[[], nn.Module] = MinMaxObserver, *, names=None,
              where: str = "input", layer_types=_LAYER_TYPES) -> Iterator[dict[str, nn.Module]]:
    """Attach one observer to each chosen layer with forward hooks; remove them on exit, whatever happens.

    Inside the ``with`` block every forward pass feeds each layer's input (``where="input"``,
    what a quantized layer must quantize) or output (``where="output"``) to its observer. The
    hooks come off when the block ends, even if it raises, so the model is left as it was.

    Args:
        model: any ``nn.Module``; it is not copied (the hooks are temporary).
        observer_factory: called once per layer, e.g. ``lambda: PercentileObserver(percentile=99.9)``.
        names: module names to observe (default: every Linear/Conv layer, see ``layer_types``).
        where: ``"input"`` or ``"output"``.

    Yields:
        ``{module name: observer}``.

    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with observing(model) as observers:
    ...     _ = model(torch.ones(4, 2))
    >>> sorted(observers), observers["0"].clipping_range(), len(model[0]._forward_pre_hooks)
    (['0', '2'], (tensor(1.), tensor(1.)), 0)
    """
    if where not in ("input", "output"):
        raise ValueError(f"where must be 'input' or 'output', got {where!r}.")
    if isinstance(observer_factory, nn.Module) or not callable(observer_factory):
        raise TypeError(f"observer_factory must make a new observer per layer: pass the class (MinMaxObserver) or "
                        f"a function (lambda: PercentileObserver(percentile=99.9)), not {observer_factory!r}.")
    modules = _select_modules(model, names, layer_types)
    observers: dict[str, nn.Module] = {}
    handles = []
    try:
        for name, module in modules.items():
            observer = observers[name] = observer_factory()
            if where == "input":
                handles.append(module.register_forward_pre_hook(_input_hook(observer)))
            else:
                handles.append(module.register_forward_hook(_output_hook(observer)))
        yield observers
    finally:
        for handle in handles:
            handle.remove()


class _Recorder(nn.Module):
    """Keeps a copy of every batch it sees (for histograms)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return x


def record_activations(model: nn.Module, x: torch.Tensor, *, names=None, where: str = "input",
                       batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Run ``x`` through ``model`` (eval mode, no gradients) and return each chosen layer's input (or output).

    ``x`` is cast to the model's dtype (float64 accepted if it fits); the model's train/eval mode
    is restored.

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``, unknown ``names``, ``x`` empty,
            non-finite, a single number, or shaped so that the model cannot run on it.

    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> {k: tuple(v.shape) for k, v in record_activations(model, torch.ones(5, 2)).items()}
    {'0': (5, 2), '2': (5, 3)}
    """
    x = _check_x(x, "x")
    if x.ndim == 0:
        raise ValueError("x must be a batch of inputs (first dimension = samples), got a single number.")
    batch_size = check_int(batch_size, "batch_size", 1)
    was_training = model.training if isinstance(model, nn.Module) else False
    with observing(model, _Recorder, names=names, where=where) as recorders:
        x = to_model_dtype(x, model, "x")
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    run_model(model, x[i:i + batch_size], "x")
        finally:
            model.train(was_training)
    return {name: torch.cat(rec.batches) for name, rec in recorders.items()}
