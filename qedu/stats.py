"""Statistics you can trust when you compare a quantized model with its float twin.

A test set of 360 images is a sample: one image is 0.28 points. Before reading a difference in
accuracy, a class that "lost" points, or a gap that "holds over seeds", ask whether chance
alone would produce it. This module answers with the standard tools, written from scratch:

* :func:`mcnemar_test` -- two models on the *same* inputs: only the inputs where exactly one of
  them is right carry information. ``b`` = float right, quantized wrong; ``c`` = the reverse.
  Under "no difference" each of these ``n = b + c`` inputs is a fair coin::

      p_exact = min(1, 2 * sum_{k <= min(b, c)} C(n, k) / 2**n)      # binomial, two-sided
      chi2    = (|b - c| - 1)**2 / (b + c),  p = erfc(sqrt(chi2 / 2))  # large-sample, continuity-corrected

* :func:`bootstrap_delta` -- a paired percentile bootstrap confidence interval for the accuracy
  change: resample the test inputs with replacement, recompute ``acc_b - acc_a``, take the
  ``(1 - confidence) / 2`` quantiles;
* :func:`sign_flip_test` -- are per-seed differences centred away from 0? Under the null each
  difference is as likely to have the opposite sign; the p-value is the share of the ``2**n``
  sign patterns whose mean is at least as far from 0 (exact for ``n <= 20``). With 5 seeds the
  smallest possible p-value is 2/32 = 0.0625: five seeds cannot reach 0.05;
* :func:`worst_class_null` -- the worst of 10 per-class changes is a *maximum*: it is large even
  when nothing systematic happens. Flip the same number of predictions at random and see how
  bad the worst class gets by chance;
* :func:`confidence_calibration` -- does the top probability mean what it says? Expected
  calibration error over equal-width bins (Guo et al. 2017)::

      ECE = sum_b (n_b / N) * |accuracy_b - mean_confidence_b|

  (This "calibration" is about probabilities; lesson 03's calibration chooses activation ranges.)
* :func:`confidence_rank` and :func:`pareto_front`: helpers for reading a comparison.

>>> mcnemar_test(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0])).p_value
1.0
>>> sign_flip_test([1.0, 2.0, 3.0, 4.0, 5.0])
0.0625
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, NamedTuple, Sequence

import torch

from qedu._validation import as_float_tensor, check_int, check_real, check_seed

__all__ = ["McNemar", "mcnemar_test", "BootstrapCI", "bootstrap_delta", "sign_flip_test", "worst_class_null",
           "ConfidenceCalibration", "confidence_calibration", "confidence_rank", "pareto_front"]


def _labels(v, name: str) -> torch.Tensor:
    t = torch.as_tensor(v) if isinstance(v, (list, tuple)) else v
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a 1-D integer tensor of class labels, got "
                        f"{t.dtype if isinstance(t, torch.Tensor) else type(v).__name__}; use logits.argmax(1).")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor (one label per input), got shape {tuple(t.shape)}.")
    return t.long()


def _paired(y, pred_a, pred_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input: is model a right, is model b right (bool tensors of equal length)."""
    y, pred_a, pred_b = _labels(y, "y"), _labels(pred_a, "pred_a"), _labels(pred_b, "pred_b")
    if not len(y) == len(pred_a) == len(pred_b):
        raise ValueError(f"y, pred_a and pred_b need one entry per input, got lengths {len(y)}, {len(pred_a)}, "
                         f"{len(pred_b)}.")
    return pred_a == y, pred_b == y


def _fraction(value, name: str, example: float) -> float:
    return check_real(value, name, 0, 1, lo_open=True, hi_open=True, example=str(example))


# ----------------------------------------------------------------------------- McNemar
class McNemar(NamedTuple):
    """``b``: a right and b wrong; ``c``: a wrong and b right; the test ``statistic`` (``min(b, c)``
    for the exact test, chi-square otherwise) and the two-sided ``p_value``."""

    b: int
    c: int
    statistic: float
    p_value: float
    exact: bool


def mcnemar_test(y, pred_a, pred_b, *, exact: bool = True) -> McNemar:
    """McNemar's test: do two models on the same inputs differ in accuracy more than chance?

    Only discordant inputs count: ``b = #(a right, b wrong)``, ``c = #(a wrong, b right)``;
    ``acc_b - acc_a = (c - b) / N``. Under the null each discordant input is a fair coin.

    Args:
        y, pred_a, pred_b: 1-D integer labels and the two models' predictions.
        exact: the binomial test (always valid; default) or the continuity-corrected chi-square
            approximation (for ``b + c`` of 25 or more).

    Returns:
        :class:`McNemar`; ``p_value = 1`` when no input is discordant.

    >>> r = mcnemar_test(torch.tensor([0] * 10), torch.zeros(10, dtype=torch.long), torch.tensor([1] * 6 + [0] * 4))
    >>> r.b, r.c, round(r.p_value, 4)
    (6, 0, 0.0312)
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}.")
    right_a, right_b = _paired(y, pred_a, pred_b)
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, exact)
    if exact:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))  # exact integers: no rounding until the division
        return McNemar(b, c, float(min(b, c)), min(1.0, 2 * tail / 2**n), True)
    chi2 = (abs(b - c) - 1) ** 2 / n if abs(b - c) >= 1 else 0.0
    return McNemar(b, c, chi2, math.erfc(math.sqrt(chi2 / 2)), False)  # chi-square, 1 dof: P(|Z| >= sqrt(chi2))


# ----------------------------------------------------------------------------- bootstrap
class BootstrapCI(NamedTuple):
    """The observed accuracy change ``delta`` (b minus a) and its ``low``-``high`` confidence interval."""

    delta: float
    low: float
    high: float
    confidence: float
    n_resamples: int


def bootstrap_delta(y, pred_a, pred_b, *, n_resamples: int = 2000, confidence: float = 0.95,
                    seed: int = 0) -> BootstrapCI:
    """Paired percentile bootstrap confidence interval for ``accuracy(b) - accuracy(a)``.

    Each resample draws ``N`` inputs with replacement (the same inputs for both models: the
    pairing is what makes the interval narrow) and recomputes the change; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those changes.

    Args:
        y, pred_a, pred_b: 1-D integer labels and predictions. n_resamples: >= 100.
        confidence: in (0, 1), default 0.95. seed: the resampling generator's seed.

    >>> ci = bootstrap_delta(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]))
    >>> ci.delta, ci.low, ci.high
    (0.0, 0.0, 0.0)
    """
    right_a, right_b = _paired(y, pred_a, pred_b)
    n_resamples = check_int(n_resamples, "n_resamples", 100)
    confidence = _fraction(confidence, "confidence", 0.95)
    diff = right_b.double() - right_a.double()  # per input: +1 fixed, -1 broken, 0 unchanged
    g = torch.Generator().manual_seed(check_seed(seed))
    idx = torch.randint(len(diff), (n_resamples, len(diff)), generator=g)  # (n_resamples, N)
    deltas = diff[idx].mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(deltas, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return BootstrapCI(float(diff.mean()), low, high, confidence, n_resamples)


# ----------------------------------------------------------------------------- seeds
def sign_flip_test(diffs, *, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value that per-seed differences have mean 0 (a paired permutation test).

    Under the null every difference is as likely to be ``+d`` as ``-d``; the p-value is the
    share of sign patterns whose mean is at least as far from 0 as the observed one. Exact
    (all ``2**n`` patterns) for ``n <= 20``; otherwise ``n_resamples`` random patterns, with
    the observed one counted (``(1 + hits) / (1 + n_resamples)``).

    >>> sign_flip_test([-1.0, -2.0, -1.5])  # all three negative: 2 of 8 patterns are as extreme
    0.25
    """
    d = as_float_tensor(diffs, "diffs").double().flatten()
    if float(d.abs().max()) > 0:
        d = d / d.abs().max()  # the p-value does not depend on the unit; this keeps sums of 1e308s finite
    observed = abs(float(d.mean()))
    tol = 1e-12 * max(1.0, observed)  # equal means computed in another order must count as equal
    if len(d) <= 20:
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=len(d))), dtype=torch.float64)  # (2**n, n)
        return float(((signs * d).mean(dim=1).abs() >= observed - tol).double().mean())
    n_resamples = check_int(n_resamples, "n_resamples", 100)
    g = torch.Generator().manual_seed(check_seed(seed))
    signs = torch.randint(0, 2, (n_resamples, len(d)), generator=g).double() * 2 - 1
    hits = int(((signs * d).mean(dim=1).abs() >= observed - tol).sum())
    return (1 + hits) / (1 + n_resamples)


def worst_class_null(y, float_pred, n_flips: int, *, n_trials: int = 1000, n_classes: int = 10,
                     seed: int = 0) -> torch.Tensor:
    """The worst per-class accuracy change that ``n_flips`` *random* prediction flips produce.

    Each trial picks ``n_flips`` distinct inputs at random and gives each a different class,
    uniformly among the other ``n_classes - 1``; the result is ``min_c delta_c`` (in [-1, 1],
    negative: a class lost) for every trial. Compare a quantized model's worst class with this
    distribution: if random flips of the same count do as badly, the "worst class" is the
    maximum of noise, not a class the quantizer singled out.

    Returns:
        float64 tensor of ``n_trials`` worst-class changes (classes absent from ``y`` ignored).

    >>> worst_class_null(torch.tensor([0, 1]), torch.tensor([0, 1]), 0, n_trials=3, n_classes=2).tolist()
    [0.0, 0.0, 0.0]
    """
    y, float_pred = _labels(y, "y"), _labels(float_pred, "float_pred")
    if len(y) != len(float_pred):
        raise ValueError(f"y and float_pred need one entry per input, got lengths {len(y)} and {len(float_pred)}.")
    n_flips = check_int(n_flips, "n_flips", 0, len(y))
    n_trials = check_int(n_trials, "n_trials", 1)
    n_classes = check_int(n_classes, "n_classes", 2)
    if int(y.max()) >= n_classes or int(float_pred.max()) >= n_classes or min(int(y.min()), int(float_pred.min())) < 0:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}; pass the right n_classes.")
    g = torch.Generator().manual_seed(check_seed(seed))
    counts = torch.bincount(y, minlength=n_classes).double()
    present = counts > 0
    base = torch.bincount(y[float_pred == y], minlength=n_classes).double()
    out = torch.empty(n_trials, dtype=torch.float64)
    for t in range(n_trials):
        pred = float_pred.clone()
        idx = torch.randperm(len(y), generator=g)[:n_flips]
        shift = torch.randint(1, n_classes, (n_flips,), generator=g)  # 1..n_classes-1: never the same class
        pred[idx] = (pred[idx] + shift) % n_classes
        right = torch.bincount(y[pred == y], minlength=n_classes).double()
        out[t] = ((right - base)[present] / counts[present]).min()
    return out


# ----------------------------------------------------------------------------- confidence
class ConfidenceCalibration(NamedTuple):
    """Expected calibration error and, per bin, the number of inputs, accuracy and mean confidence
    (``nan`` for empty bins): the data of a reliability diagram."""

    ece: float
    bin_edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor


def _logits(logits, n: int | None = None) -> torch.Tensor:
    t = as_float_tensor(logits, "logits")
    if t.ndim != 2 or t.shape[1] < 2 or (n is not None and len(t) != n):
        raise ValueError(f"logits must be (N, n_classes) with n_classes >= 2{'' if n is None else f' and N = {n}'}, "
                         f"got shape {tuple(t.shape)}.")
    return t.double()


def confidence_calibration(logits, y, *, n_bins: int = 15) -> ConfidenceCalibration:
    """Expected calibration error (ECE) of a classifier's top probability, ``n_bins`` equal-width bins.

    ``confidence = max softmax(logits)``; an input falls in bin ``b`` when ``confidence`` lies in
    ``(b / n_bins, (b + 1) / n_bins]``. ``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|``:
    0 when, in every bin, the model is right exactly as often as it claims. In the example both
    inputs are 88 % sure and one is right: ``|0.5 - 0.8808| = 0.3808``.

    >>> round(confidence_calibration(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), n_bins=2).ece, 4)
    0.3808
    """
    y = _labels(y, "y")
    z = _logits(logits, len(y))
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise ValueError(f"y holds labels {int(y.min())}..{int(y.max())}, outside the {z.shape[1]} classes of logits; "
                         "pass the labels that go with these logits.")
    n_bins = check_int(n_bins, "n_bins", 1, 10_000)
    probs = z.softmax(dim=1)
    conf, pred = probs.max(dim=1)
    right = (pred == y).double()
    b = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)  # (N,) bin of each input
    counts = torch.bincount(b, minlength=n_bins).double()
    sum_right = torch.bincount(b, weights=right, minlength=n_bins)
    sum_conf = torch.bincount(b, weights=conf, minlength=n_bins)
    ece = float((sum_right - sum_conf).abs().sum() / len(y))
    return ConfidenceCalibration(ece, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), counts,
                                 sum_right / counts, sum_conf / counts)


def confidence_rank(logits) -> torch.Tensor:
    """Per input, the share of the *other* inputs on which the model is less sure (top probability).

    0 for the least sure input, ``(N - 1) / N`` for the surest; ties share the lower rank.
    ``confidence_rank(z) < 0.1`` marks the least-sure tenth.

    >>> confidence_rank(torch.tensor([[0.0, 3.0], [0.0, 0.1], [1.0, 0.0]])).tolist()
    [0.6666666666666666, 0.0, 0.3333333333333333]
    """
    conf = _logits(logits).softmax(dim=1).max(dim=1).values
    return (conf[None, :] < conf[:, None]).double().sum(dim=1) / len(conf)  # (N, N) comparisons -> (N,)


# ----------------------------------------------------------------------------- trade-offs
def pareto_front(points: Sequence[Mapping], *, maximize: Sequence[str] = ("accuracy",),
                 minimize: Sequence[str] = ("bytes", "ms")) -> list[bool]:
    """Which configurations no other one beats: ``True`` for each point on the Pareto front.

    Point ``j`` dominates ``i`` when it is at least as good in every objective (higher in
    ``maximize``, lower in ``minimize``) and strictly better in one.

    >>> pareto_front([{"accuracy": 0.9, "bytes": 10}, {"accuracy": 0.8, "bytes": 20}, {"accuracy": 0.95, "bytes": 40}],
    ...              minimize=("bytes",))
    [True, False, True]
    """
    if isinstance(maximize, str) or isinstance(minimize, str):
        raise TypeError("maximize and minimize must be sequences of keys, e.g. ('accuracy',), not a bare string.")
    keys = list(maximize) + list(minimize)
    if not keys:
        raise ValueError("give at least one objective in maximize or minimize.")
    rows = []
    for i, p in enumerate(points):
        missing = [k for k in keys if not isinstance(p, Mapping) or k not in p]
        if missing:
            raise ValueError(f"point {i} lacks {missing}; every point needs the keys {keys}.")
        value = {k: check_real(p[k], f"points[{i}][{k!r}]", allow_inf=True, example="0.93") for k in keys}  # NaN never dominates
        rows.append([value[k] for k in maximize] + [-value[k] for k in minimize])  # higher is better everywhere
    front = []
    for i, a in enumerate(rows):
        dominated = any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a))
                        for j, b in enumerate(rows) if j != i)
        front.append(not dominated)
    return front
