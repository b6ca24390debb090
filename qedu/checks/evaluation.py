"""Checks for the exercises of lessons 08 (evaluation) and 09 (data quality and security).

* :func:`check_disagreement_rate`: ``fn(y, float_pred, quant_pred) -> float``, the share of
  inputs whose prediction changed;
* :func:`check_per_class_deltas`: ``fn(y, float_pred, quant_pred, n_classes) -> tensor``, per
  class the quantized accuracy minus the float accuracy (``nan`` for a class with no input);
* :func:`check_clip_rate`: ``fn(x, scale, zero_point, qmin, qmax) -> float``, the share of
  values whose code the clamp changes (the saturation monitor's measurement);
* :func:`check_fgsm`: ``fn(model, x, y, eps) -> x_adv``, the fast gradient sign method.

The references are :mod:`qedu.evaluation` and :mod:`qedu.security`. After a mismatch a classic
mistake is named only when a second probe confirms it; otherwise probes describe what differs
(clip rate: each value is tried alone, so the message says which values are counted wrongly).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qedu.checks.formats import _ratio_note
from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, _close, compare, localize, run_check
from qedu.checks.quantizers import factor
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
    describe=lambda f: _describe_rate(f),
)


def _describe_rate(f: Failure) -> list[str]:
    a = _number(f.actual)
    notes = []
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        if a == 0 and f.expected > 0:
            notes.append("you return 0 although some predictions changed: integer division (//) or int() cuts the "
                         "fraction to 0; use / or .float().mean()")
        if a > 1:
            notes.append(f"{a!r} is more than 1: return a fraction of the inputs, not a count or a percentage"
                         + (f" (yours is {factor(a / f.expected)} x the expected)" if f.expected else ""))
        elif f.expected and abs(a + f.expected - 1) < 1e-6:
            notes.append("yours + expected = 1: you measured the opposite (agreement instead of disagreement, or == for !=)")
        note = _ratio_note(f.expected, a) if f.expected and a and a <= 1 else None
        if note and "exponent" not in note:
            notes.append(note)
    return notes


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
    describe=lambda f: _describe_deltas(f),
)


def _describe_deltas(f: Failure) -> list[str]:
    a = f.actual
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor) or a.shape != f.expected.shape or not a.is_floating_point():
        return []
    e, a = f.expected.double(), a.detach().double()
    notes = []
    if bool((torch.isnan(e) & ~torch.isnan(a)).any()):
        notes.append("a class with no input must give nan (0 / 0), yours gives a number")
    ok = ~torch.isnan(e) & ~torch.isnan(a)
    if bool(ok.any()) and bool(torch.allclose(a[ok], -e[ok], atol=1e-6)) and bool((e[ok] != 0).any()):
        notes.append("every delta has the opposite sign: quantized accuracy minus float accuracy")
    wrong = ~_close(e, a, atol=1e-6)
    y, fp, qp, n = f.case.args
    counts = torch.bincount(y, minlength=n)
    where = localize(wrong, {"the class has no input": counts == 0,
                             "the float and quantized predictions differ on the class": torch.tensor(
                                 [bool(((fp != qp) & (y == c)).any()) for c in range(n)])})
    if where:
        notes.append("wrong " + where.replace("position", "class"))
    return notes


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
        Case((torch.tensor([2.25, 2.25, -5.75, 0.0]), 0.5, 3, -8, 7),
             label="ties at both ends, zero point 3: 4.5 -> 4 (code 7, kept), -11.5 -> -12 (code -9, clipped)"),
        Case((torch.tensor([3.5, -4.0, 3.75, 1.0, -4.25]), 0.5, 0, -8, 7), label="exactly qmax and qmin, and just past"),
    ],
    random_case=_clip_case,
    describe=lambda f: _describe_clip(f),
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
                "the code is round(x * (1/scale)) + zero_point."),
        Mistake("returned a count, not a fraction",
                lambda x, s, zp, lo, hi: int(((_codes(x, s, zp) < lo) | (_codes(x, s, zp) > hi)).sum()),
                "divide by the number of values."),
    ],
    hints=("codes = torch.round(x * (1 / scale)) + zero_point; clipped = (codes < qmin) | (codes > qmax); "
           "return clipped.float().mean().item()",),
    compare=_same_number,
)


def _clip_features(x, scale, zero_point, qmin, qmax) -> dict:
    v = _codes(x, scale, 0)
    code = v + zero_point
    frac = x * (1.0 / scale) - torch.floor(x * (1.0 / scale))
    return {"x * (1/scale) is an exact tie (k + 0.5)": frac == 0.5,
            "the code is exactly qmin or qmax (on the grid: not clipped)": (code == qmin) | (code == qmax),
            "the code is below qmin": code < qmin,
            "the code is above qmax": code > qmax,
            "the value is within half a step beyond the last level (it rounds onto the grid)":
                ((x * (1.0 / scale) + zero_point > qmax) & (code <= qmax)) | ((x * (1.0 / scale) + zero_point < qmin) & (code >= qmin)),
            "x < 0": x < 0}


def _describe_clip(f: Failure) -> list[str]:
    x, scale, zero_point, qmin, qmax = f.case.args
    notes = []
    a = _number(f.actual)
    if isinstance(a, (int, float)) and not isinstance(a, bool) and a > 1:
        notes.append(f"{a!r} is more than 1: return the fraction of values that clip, not a count or a percentage")

    def per_case(case, expected, mine):  # one value at a time: which values does the learner count as clipped?
        cx, cs, cz, lo, hi = case.args
        flags_mine, flags_ref = [], []
        for i in range(min(cx.numel(), 40)):
            one = Case((cx[i:i + 1].clone(), cs, cz, lo, hi))
            m = _number(f.learner(one))
            if not isinstance(m, (int, float)):
                return None
            flags_mine.append(float(m) != 0.0)
            flags_ref.append(float(f.reference(one)) != 0.0)
        k = len(flags_mine)
        return torch.tensor(flags_mine) != torch.tensor(flags_ref), {n: m[:k] for n, m in _clip_features(cx, cs, cz, lo, hi).items()}

    wrong, features = f.pooled(per_case, n_cases=8)
    if wrong is not None and bool(wrong.any()):
        where = localize(wrong, features)
        if not where:
            examples = []
            for i in range(min(x.numel(), 40)):
                one = Case((x[i:i + 1].clone(), scale, zero_point, qmin, qmax))
                mine, ref = _number(f.learner(one)), float(f.reference(one))
                if isinstance(mine, (int, float)) and (float(mine) != 0.0) != (ref != 0.0):
                    code = int(_codes(x[i:i + 1], scale, zero_point))
                    examples.append(f"x = {float(x[i]):g} (code {code}): yours says {'clipped' if mine else 'not clipped'}")
            if examples:
                notes.append(f"tried one value at a time, with qmin = {qmin}, qmax = {qmax}: " + "; ".join(examples[:3]))
        else:
            tip = {"exact tie": ": round with torch.round (ties to even), then compare",
                   "exactly qmin or qmax": ": a code equal to qmin or qmax is on the grid; only < qmin or > qmax clips",
                   "half a step": ": round to codes first, then compare with qmin and qmax",
                   "below qmin": ": count codes below qmin too",
                   "above qmax": ": count codes above qmax too"}
            notes.append("tried one value at a time, yours is wrong " + where.replace("every other position", "every other value")
                         + next((t for k, t in tip.items() if k in where), ""))
    elif wrong is not None:
        notes.append("each value alone is judged right: the mistake is in how you average (divide by the number of values)")
    if zero_point != 0:
        at0 = Case((x.clone(), scale, 0, qmin, qmax))
        if f.right_on(at0):
            notes.append(f"right with zero_point = 0, wrong with zero_point = {zero_point}: the code is "
                         "round(x * (1/scale)) + zero_point")
    return notes


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


def _fixed_model(weight, bias) -> nn.Module:
    """A linear model with hand-set weights: a zero column gives a pixel zero gradient."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(weight[0]), len(weight)))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weight))
        model[1].bias.copy_(torch.tensor(bias))
    return model.eval()


_ZERO_COLUMN = _fixed_model([[1.0, 0.0, -2.0, 0.5], [-1.0, 0.0, 1.0, 0.25], [0.5, 0.0, 0.5, -1.0]], [0.0, 0.1, -0.1])
FGSM = CheckSpec(
    name="fgsm",
    reference=fgsm,
    golden=[
        Case((_linear_model(np.random.default_rng(0), 4, 3), _GOLDEN_X, torch.tensor([0, 2]), 0.1), label="near the edges"),
        Case((_linear_model(np.random.default_rng(1), 4, 2), _GOLDEN_X, torch.tensor([1, 1]), 0.0), label="eps = 0"),
        Case((_ZERO_COLUMN, torch.tensor([[[[0.05, 0.5], [0.03, 0.98]]], [[[0.5, 0.5], [0.5, 0.5]]]]), torch.tensor([0, 1]), 0.1),
             label="pixel 2 has zero gradient (stays), some pixels are pushed below 0 or above 1"),
        Case((_ZERO_COLUMN, torch.tensor([[[[0.2, 0.7], [0.1, 0.9]]]]), torch.tensor([2]), 0.25), label="eps 0.25"),
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
    hints=("x = x.clone().requires_grad_(True); loss = F.cross_entropy(model(x), y); grad, = torch.autograd.grad(loss, x); "
           "return (x + eps * grad.sign()).clamp(0, 1).detach()",),
    atol=1e-6,
    detached=True,
    describe=lambda f: _describe_fgsm(f),
)


def _fgsm_features(model, x, y, eps) -> dict:
    grad = _input_grad(model, x, y)
    step = x + eps * grad.sign()
    return {"the pixel's gradient is zero (sign 0: it must not move)": grad == 0,
            "x + eps * sign(grad) leaves [0, 1] (the clamp decides)": (step < 0) | (step > 1),
            "x + eps * sign(grad) goes below 0": step < 0,
            "x + eps * sign(grad) goes above 1": step > 1}


def _describe_fgsm(f: Failure) -> list[str]:
    model, x, y, eps = f.case.args
    a = f.actual
    if not isinstance(a, torch.Tensor) or a.shape != x.shape:
        return []
    notes = []
    a = a.detach()
    moved = a - x
    if eps > 0:
        grad = _input_grad(model, x, y)
        free = (grad != 0) & ((x + eps * grad.sign()) >= 0) & ((x + eps * grad.sign()) <= 1) & (a > 0) & (a < 1)
        if bool(free.any()):
            size = moved[free].abs()
            if bool((size > eps * 1.0001).any()) or bool((size < eps * 0.9999).any()):
                notes.append(f"where nothing clamps, your pixels move by {size.min().item():.4g} .. {size.max().item():.4g}, "
                             f"not by exactly eps = {eps}: x + eps * grad.sign()")
        moving = (grad != 0) & (moved != 0)
        against = moving & (moved.sign() != grad.sign())
        if bool(against.any()):
            notes.append(f"{int(against.sum())} of your {int(moving.sum())} moved pixels move in the wrong direction: "
                         "step along the sign of the gradient of cross_entropy(model(x), y)")
    if bool((a < 0).any()) or bool((a > 1).any()):
        notes.append("some of your pixels lie outside [0, 1]: clamp at the end")

    def per_case(case, expected, mine):
        if not isinstance(mine, torch.Tensor) or mine.shape != expected.shape:
            return None
        return ~_close(expected, mine.detach(), atol=1e-6), _fgsm_features(*case.args)

    wrong, features = f.pooled(per_case, n_cases=8)
    where = localize(wrong, features) if wrong is not None else None
    if where:
        notes.append("wrong " + where.replace("position", "pixel"))
    return notes


def check_fgsm(fn):
    """Check ``fn(model, x, y, eps) -> x_adv``: ``clamp(x + eps * sign(grad_x loss), 0, 1)``."""
    return run_check(FGSM, fn)
