"""Checks for the exercises of lessons 08 (evaluation) and 09 (data quality and security).

* :func:`check_disagreement_rate`: ``fn(y, float_pred, quant_pred) -> float``, the share of
  inputs whose prediction changed;
* :func:`check_per_class_deltas`: ``fn(y, float_pred, quant_pred, n_classes) -> tensor``, per
  class the quantized accuracy minus the float accuracy (``nan`` for a class with no input);
* :func:`check_clip_rate`: ``fn(x, scale, zero_point, qmin, qmax) -> float``, the share of
  values whose code the clamp changes (the saturation monitor's measurement);
* :func:`check_fgsm`: ``fn(model, x, y, eps) -> x_adv``, the fast gradient sign method.

The references are :mod:`qedu.evaluation` and :mod:`qedu.security`; each check names the classic
mistakes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qedu.checks.framework import Case, CheckSpec, Mistake, compare, run_check
from qedu.evaluation import disagreement_rate, per_class_deltas
from qedu.formats import IntFormat
from qedu.security import clip_rate, fgsm

__all__ = ["check_disagreement_rate", "check_per_class_deltas", "check_clip_rate", "check_fgsm",
           "DISAGREEMENT", "PER_CLASS_DELTAS", "CLIP_RATE", "FGSM"]


def _number(actual):
    """Accept a 0-d tensor or numpy scalar where a number is asked for."""
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        return actual.item()
    if isinstance(actual, np.generic):
        return actual.item()
    return actual


def _same_number(expected, actual) -> str | None:
    actual = _number(actual)
    if isinstance(actual, int) and not isinstance(actual, bool) and isinstance(expected, float):
        actual = float(actual) if float(actual) == expected else actual  # 0 or 1 as an int is fine
    return compare(expected, actual, atol=1e-6)  # float32 arithmetic is fine


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _random_predictions(rng: np.random.Generator, n_classes: int | None = None):
    n_classes = n_classes or int(rng.integers(2, 11))
    n = int(rng.integers(5, 60))
    y = rng.integers(0, n_classes, size=n)
    float_pred = np.where(rng.random(n) < 0.85, y, rng.integers(0, n_classes, size=n))  # mostly right
    quant_pred = np.where(rng.random(n) < 0.8, float_pred, rng.integers(0, n_classes, size=n))  # mostly agrees
    return n_classes, _t(y), _t(float_pred), _t(quant_pred)


# --- 1. disagreement rate ----------------------------------------------------------------------
def _accuracy(pred, y) -> float:
    return float((pred == y).double().mean())


DISAGREEMENT = CheckSpec(
    name="disagreement_rate",
    reference=lambda y, float_pred, quant_pred: disagreement_rate(float_pred, quant_pred),
    golden=[
        Case((_t([0, 1, 2, 3, 4]), _t([0, 1, 2, 3, 0]), _t([0, 1, 2, 0, 4])), label="two flips that cancel in accuracy"),
        Case((_t([0, 1, 1, 0]), _t([0, 1, 1, 0]), _t([0, 1, 1, 0])), label="identical predictions"),
        Case((_t([2, 2, 2]), _t([0, 1, 2]), _t([1, 2, 0])), label="every prediction changed"),
    ],
    random_case=lambda rng: Case(_random_predictions(rng)[1:]),
    mistakes=[
        Mistake("compared with the labels instead of the float model's predictions",
                lambda y, f, q: float((q != y).double().mean()),
                "that is the quantized model's error rate; disagreement asks where quant_pred != float_pred."),
        Mistake("compared the two accuracies instead of the predictions",
                lambda y, f, q: abs(_accuracy(f, y) - _accuracy(q, y)),
                "an image broken and another fixed leave accuracy unchanged but are two disagreements."),
        Mistake("returned the agreement, not the disagreement", lambda y, f, q: float((q == f).double().mean()),
                "count the positions where the predictions differ (!=)."),
        Mistake("returned a count, not a fraction", lambda y, f, q: int((q != f).sum()),
                "divide by the number of inputs (or use .float().mean())."),
    ],
    hints=("(quant_pred != float_pred).float().mean().item()",),
    compare=_same_number,
)


def check_disagreement_rate(fn):
    """Check ``fn(y, float_pred, quant_pred) -> float``: the share of inputs whose prediction changed."""
    return run_check(DISAGREEMENT, fn)


# --- 2. per-class deltas -----------------------------------------------------------------------
def _by_predicted_class(y, f, q, n_classes):
    def precision(pred):
        return (torch.bincount(pred[pred == y], minlength=n_classes).double()
                / torch.bincount(pred, minlength=n_classes).double())
    return precision(q) - precision(f)


def _over_all_inputs(y, f, q, n_classes):
    def acc(pred):
        return torch.bincount(y[pred == y], minlength=n_classes).double() / len(y)
    return acc(q) - acc(f)


def _absent_as_zero(y, f, q, n_classes):
    return torch.nan_to_num(per_class_deltas(y, f, q, n_classes), nan=0.0)


def _same_deltas(expected, actual) -> str | None:
    if isinstance(actual, np.ndarray):
        actual = torch.from_numpy(actual)
    if isinstance(actual, torch.Tensor) and actual.is_floating_point():
        actual = actual.double()  # any float dtype is fine
    return compare(expected, actual, atol=1e-6)


PER_CLASS_DELTAS = CheckSpec(
    name="per_class_deltas",
    reference=per_class_deltas,
    golden=[
        Case((_t([0, 0, 0, 0, 1, 1]), _t([0, 0, 0, 1, 1, 1]), _t([0, 0, 1, 1, 1, 0]), 2), label="two classes"),
        Case((_t([0, 0, 1, 1]), _t([0, 0, 1, 1]), _t([0, 1, 1, 1]), 3), label="class 2 has no input: nan"),
        Case((_t([0, 1, 1, 2, 2, 2]), _t([0, 1, 0, 2, 2, 1]), _t([1, 1, 1, 2, 0, 2]), 3), label="gains and losses"),
    ],
    random_case=lambda rng: Case((lambda n, y, f, q: (y, f, q, n))(*_random_predictions(rng))),
    mistakes=[
        Mistake("divided by the total number of inputs instead of the number in the class", _over_all_inputs,
                "accuracy of class c = correct predictions among the inputs of class c / number of inputs of class c."),
        Mistake("subtracted the wrong way round (float - quantized)", lambda y, f, q, n: -per_class_deltas(y, f, q, n),
                "a loss must come out negative: quantized accuracy minus float accuracy."),
        Mistake("grouped by predicted class instead of true class", _by_predicted_class,
                "select the inputs with y == c (their true class), then see how many were predicted right."),
        Mistake("gave a class with no input 0 instead of nan", _absent_as_zero,
                "a class with no test input has no accuracy: 0 / 0 should stay nan, not become 0."),
    ],
    hints=("torch.bincount(y[pred == y], minlength=n_classes) / torch.bincount(y, minlength=n_classes), for each model",),
    compare=_same_deltas,
)


def check_per_class_deltas(fn):
    """Check ``fn(y, float_pred, quant_pred, n_classes) -> float tensor (n_classes,)``."""
    return run_check(PER_CLASS_DELTAS, fn)


# --- 3. clip rate (the saturation monitor) -----------------------------------------------------
_FORMATS = {(f.qmin, f.qmax): f for f in (IntFormat(b, signed=s) for b in range(2, 9) for s in (True, False))}


def _clip_rate(x, scale, zero_point, qmin, qmax):
    return clip_rate(x, scale, zero_point, _FORMATS[qmin, qmax])


def _codes(x, scale, zero_point):
    return torch.round(x * (1.0 / scale)) + zero_point


def _clip_case(rng: np.random.Generator) -> Case:
    fmt = IntFormat(int(rng.integers(2, 9)), signed=bool(rng.integers(0, 2)))
    scale = float(rng.choice([0.05, 0.1, 0.2, 0.5]))
    zero_point = int(rng.integers(fmt.qmin, fmt.qmax + 1))
    x = torch.tensor(rng.normal(0.0, 1.5 * scale * fmt.levels / 2, size=int(rng.integers(5, 80))), dtype=torch.float32)
    return Case((x, scale, zero_point, fmt.qmin, fmt.qmax))


CLIP_RATE = CheckSpec(
    name="clip_rate",
    reference=_clip_rate,
    golden=[
        Case((torch.tensor([-0.12, 0.0, 0.7, 1.5, 1.52, 1.64]), 0.1, 0, 0, 15), label="uint4, both ends"),
        Case((torch.tensor([-0.8, 0.2, 0.42, 0.46, 0.6, 0.74]), 0.1, 3, -8, 7), label="int4 with zero point 3"),
        Case((torch.tensor([0.5, 0.25, 0.75]), 0.01, 0, 0, 255), label="nothing clips"),
    ],
    random_case=_clip_case,
    mistakes=[
        Mistake("counted values that land exactly on qmin or qmax as clipped (>= instead of >)",
                lambda x, s, zp, lo, hi: float(((_codes(x, s, zp) <= lo) | (_codes(x, s, zp) >= hi)).double().mean()),
                "a code equal to qmax is on the grid, represented exactly; only a code the clamp changes "
                "(above qmax or below qmin) is clipped."),
        Mistake("forgot the lower bound", lambda x, s, zp, lo, hi: float((_codes(x, s, zp) > hi).double().mean()),
                "values below the grid clip too: count codes < qmin as well."),
        Mistake("compared x with the range ends before rounding",
                lambda x, s, zp, lo, hi: float(((x < (lo - zp) * s) | (x > (hi - zp) * s)).double().mean()),
                "a value up to half a step beyond the last level rounds onto it: round to codes first, then compare."),
        Mistake("forgot the zero point",
                lambda x, s, zp, lo, hi: float(((_codes(x, s, 0) < lo) | (_codes(x, s, 0) > hi)).double().mean()),
                "the code is round(x / scale) + zero_point."),
        Mistake("returned a count, not a fraction",
                lambda x, s, zp, lo, hi: int(((_codes(x, s, zp) < lo) | (_codes(x, s, zp) > hi)).sum()),
                "divide by the number of values."),
    ],
    hints=("codes = torch.round(x / scale) + zero_point; clipped = (codes < qmin) | (codes > qmax)",),
    compare=_same_number,
)


def check_clip_rate(fn):
    """Check ``fn(x, scale, zero_point, qmin, qmax) -> float``: the share of values that clip."""
    return run_check(CLIP_RATE, fn)


# --- 4. FGSM -------------------------------------------------------------------------------------
def _linear_model(rng: np.random.Generator, n_in: int, n_out: int) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(rng.normal(0, 1, size=(n_out, n_in)), dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(rng.normal(0, 0.1, size=n_out), dtype=torch.float32))
    return model.eval()


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


def _fgsm_case(rng: np.random.Generator) -> Case:
    n, side, n_out = int(rng.integers(1, 6)), int(rng.integers(2, 4)), int(rng.integers(2, 5))
    x = torch.tensor(rng.random((n, 1, side, side)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, n_out, size=n), dtype=torch.int64)
    return Case((_linear_model(rng, side * side, n_out), x, y, float(rng.choice([0.05, 0.1, 0.3]))))


_GOLDEN_X = torch.tensor([[[[0.95, 0.02], [0.5, 0.6]]], [[[0.0, 1.0], [0.3, 0.97]]]])
FGSM = CheckSpec(
    name="fgsm",
    reference=fgsm,
    golden=[
        Case((_linear_model(np.random.default_rng(0), 4, 3), _GOLDEN_X, torch.tensor([0, 2]), 0.1), label="near the edges"),
        Case((_linear_model(np.random.default_rng(1), 4, 2), _GOLDEN_X, torch.tensor([1, 1]), 0.0), label="eps = 0"),
    ],
    random_case=_fgsm_case,
    mistakes=[
        Mistake("used the gradient instead of its sign",
                lambda m, x, y, eps: (x + eps * _input_grad(m, x, y)).clamp(0, 1),
                "FGSM moves every pixel by exactly eps: x + eps * grad.sign()."),
        Mistake("forgot to clamp to [0, 1]", lambda m, x, y, eps: x + eps * _input_grad(m, x, y).sign(),
                "pixels must stay valid images: .clamp(0, 1) at the end."),
        Mistake("stepped down the loss (x - eps * sign)",
                lambda m, x, y, eps: (x - eps * _input_grad(m, x, y).sign()).clamp(0, 1),
                "an attack *increases* the loss: add eps * sign(grad)."),
    ],
    hints=("x = x.clone().requires_grad_(True); loss = F.cross_entropy(model(x), y); grad, = torch.autograd.grad(loss, x)",),
    atol=1e-6,
)


def check_fgsm(fn):
    """Check ``fn(model, x, y, eps) -> x_adv``: ``clamp(x + eps * sign(grad_x loss), 0, 1)``."""
    return run_check(FGSM, fn)
