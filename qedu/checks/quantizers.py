"""Checks for the exercises of lesson 02 (uniform quantization).

Codes are signed ``bits``-bit integers (``qmin = -2**(bits-1)``, ``qmax = 2**(bits-1) - 1``).

* :func:`check_qparams`: ``fn(x, bits, symmetric) -> (scale: float, zero_point: int)``
* :func:`check_quantize`: ``fn(x, scale, zero_point, bits) -> integer tensor``
* :func:`check_dequantize`: ``fn(q, scale, zero_point) -> float tensor``
* :func:`check_per_channel`: ``fn(w, bits) -> w_hat``, symmetric fake quantization, one scale per row
* :func:`check_stochastic_round`: ``fn(v, generator) -> float tensor`` of integers (compared by statistics)
* :func:`check_pack4`: ``fn(q) -> uint8 tensor``, two 4-bit codes per byte, first in the low nibble

The references are qedu's own :mod:`qedu.quantizers` and :mod:`qedu.packing`. After a mismatch,
each check's ``describe`` probes say what differs (ties, clipping, the zero point, one sign, ...).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, _close, compare, localize, run_check
from qedu.formats import IntFormat
from qedu.granularity import PerChannel
from qedu.packing import pack
from qedu.quantizers import FLOAT32_EPS, choose_qparams, dequantize, fake_quantize, quantize

__all__ = ["check_qparams", "check_quantize", "check_dequantize", "check_per_channel", "check_stochastic_round",
           "check_pack4", "QPARAMS", "QUANTIZE", "DEQUANTIZE", "PER_CHANNEL", "STOCHASTIC_ROUND", "PACK4"]


def _range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def factor(ratio: float) -> str:
    """A ratio as a learner can read it: '2', '1/2', '127/127.5', or '1.37'."""
    if not math.isfinite(ratio) or ratio == 0:
        return repr(ratio)
    for num, den in ((255, 256), (256, 255), (127, 127.5), (127.5, 127), (2 ** 0.5, 1)):
        if abs(ratio - num / den) < 1e-6 * abs(ratio):
            return f"{num}/{den}"
    frac = Fraction(ratio).limit_denominator(64)
    if abs(float(frac) - ratio) < 1e-6 * abs(ratio):
        return str(frac)
    return f"{ratio:.4g}"


def _wrong_mask(expected: torch.Tensor, actual, atol=0.0, rtol=0.0):
    """Boolean mask of the differing positions, or None when the shapes do not line up."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return None
    return ~_close(expected, actual.detach(), atol, rtol)


def _offset_phrase(expected: torch.Tensor, actual: torch.Tensor, wrong: torch.Tensor, unit: str = "code") -> str | None:
    d = (actual.detach().double() - expected.double())[wrong]
    if d.numel() == 0 or not bool(torch.isfinite(d).all()):
        return None
    if bool((d == d[0]).all()):
        k = float(d[0])
        k_text = str(int(k)) if k == int(k) else f"{k:g}"
        return f"off by {'+' if k > 0 else ''}{k_text} {unit}{'s' if abs(k) != 1 else ''}"
    if bool((d.abs() == 1).all()):
        return f"off by one {unit}"
    return None

# --- scale and zero point ------------------------------------------------------------------------

def _qparams(x, bits, symmetric):
    scale, zero_point = choose_qparams(x, IntFormat(bits), symmetric=symmetric)
    return float(scale), int(zero_point)


def _numbers(actual):
    """0-d tensors and numpy scalars where numbers are asked for are fine."""
    if isinstance(actual, (tuple, list)):
        return tuple(a.item() if (isinstance(a, torch.Tensor) and a.numel() == 1) or isinstance(a, np.generic) else a
                     for a in actual)
    return actual


def _same_qparams(expected, actual) -> str | None:
    """(float, int) within float32 rounding; 0-d tensors are accepted and turned into numbers."""
    return compare(expected, _numbers(actual), rtol=1e-5)


def _qparams_with(x, bits, symmetric, *, qmax=None, qmin=None, widen=True, sym_div=None, zp_sign=-1, eps=FLOAT32_EPS,
                  zp_round=round):
    """The formula with one ingredient swapped, to build the classic mistakes."""
    true_qmin, true_qmax = _range(bits)
    qmax = true_qmax if qmax is None else qmax
    qmin = true_qmin if qmin is None else qmin
    lo, hi = float(x.min()), float(x.max())
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        scale = max(max(-lo, hi) / ((qmax - qmin) / 2 if sym_div is None else sym_div(qmin, qmax)), eps)
        return float(np.float32(scale)), 0
    scale = float(np.float32(max((hi - lo) / (qmax - qmin), eps)))
    zero_point = qmin + zp_sign * zp_round(lo / scale) if scale else qmin
    return scale, int(min(max(zero_point, qmin), qmax))


def _describe_qparams(f: Failure) -> list[str]:
    actual = _numbers(f.actual)
    if not (isinstance(actual, tuple) and len(actual) == 2 and all(isinstance(a, (int, float)) for a in actual)):
        return []
    (es, ez), (s, z) = f.expected, actual
    x, bits, symmetric = f.case.args
    notes = []
    scale_ok = compare(es, float(s), rtol=1e-5) is None
    if scale_ok and z != ez:
        note = f"scale right, zero point off by {int(z - ez):+d}"
        lo = min(float(x.min()), 0.0)
        v = lo / es
        if abs(abs(v - math.floor(v)) - 0.5) < 1e-9:
            note += (f" - here lo / scale = {v:g} is an exact tie: round it to the even integer "
                     "(round() and torch.round do; floor(v + 0.5) and half-away rounding do not)")
        notes.append(note)
    elif not scale_ok:
        if s == 0:
            notes.append("scale is 0 (x is all zeros here): floor it at 1.1920929e-07 so the grid still exists")
        else:
            notes.append(f"scale off by a factor {factor(s / es)} (yours / expected)"
                         + ("; zero point right" if z == ez else f"; zero point off by {int(z - ez):+d}"))
    other = f.with_args(symmetric=not symmetric)
    if f.right_on(other):
        notes.append(f"your {'affine' if symmetric else 'symmetric'} answer for this x is right: only the "
                     f"{'symmetric' if symmetric else 'affine'} branch is wrong")
    if bits != 8:
        at8 = f.with_args(bits=8)
        if f.right_on(at8):
            notes.append(f"right for 8 bits, wrong for {bits} bits: derive qmin and qmax from bits "
                         "(-2**(bits-1) .. 2**(bits-1) - 1)")
    return notes


def _qparams_case(rng: np.random.Generator) -> Case:
    x = torch.tensor(rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 5), size=int(rng.integers(2, 30))), dtype=torch.float32)
    return Case((x, int(rng.choice([2, 3, 4, 5, 6, 7, 8, 12, 16])), bool(rng.integers(0, 2))))


QPARAMS = CheckSpec(
    name="qparams",
    reference=_qparams,
    golden=[
        Case((_tensor([-1.0, 0.5, 2.0]), 8, False), label="affine int8"),
        Case((_tensor([-1.0, 0.5, 2.0]), 8, True), label="symmetric int8: max|x| / 127.5"),
        Case((_tensor([0.5, 1.0, 3.0]), 4, False), label="all positive: widen the range to include 0"),
        Case((_tensor([-6.0, -2.0, -0.5]), 4, False), label="all negative"),
        Case((_tensor([-0.375, 63.375]), 8, False), label="lo / scale = -1.5, a tie: zero point -126"),
        Case((_tensor([-0.625, 63.125]), 8, False), label="lo / scale = -2.5, a tie: zero point -126"),
        Case((_tensor([-1.0, 2.0]), 2, False), label="2 bits"),
        Case((_tensor([-3.0, 1.0]), 3, True), label="3 bits symmetric"),
        Case((_tensor([-1.0, 40.0]), 12, False), label="12 bits"),
        Case((_tensor([-5.0, 3.0]), 16, False), label="16 bits"),
        Case((_tensor([0.0, 0.0]), 8, True), label="all zeros: scale may not be 0"),
        Case((_tensor([0.0, 0.0, 0.0]), 4, False), label="all zeros, affine"),
        Case((_tensor([2.5, 2.5]), 8, False), label="a constant positive x, affine"),
    ],
    random_case=_qparams_case,
    probes=[Case((_tensor([-3.0, 1.0, 0.2]), 6, False), label="affine, 6 bits"),
            Case((_tensor([1.0, 4.0]), 5, False), label="all positive, 5 bits"),
            Case((_tensor([0.5, 2.0]), 8, True), label="all positive, symmetric")],
    mistakes=[
        Mistake("qmax = 2**bits instead of 2**(bits-1) - 1", lambda x, b, s: _qparams_with(x, b, s, qmax=2**b),
                "signed b-bit codes run from -2**(b-1) to 2**(b-1) - 1 (int8: -128..127)."),
        Mistake("the unsigned range 0 .. 2**bits - 1 for signed codes", lambda x, b, s: _qparams_with(x, b, s, qmin=0, qmax=2**b - 1),
                "signed b-bit codes run from qmin = -2**(b-1) to qmax = 2**(b-1) - 1."),
        Mistake("the range was not widened to include 0", lambda x, b, s: _qparams_with(x, b, s, widen=False),
                "use lo = min(x.min(), 0) and hi = max(x.max(), 0), so that a real 0 is exactly representable."),
        Mistake("symmetric scale max|x| / qmax instead of max|x| / ((qmax - qmin) / 2)",
                lambda x, b, s: _qparams_with(x, b, s, sym_div=lambda qmin, qmax: qmax),
                "this kit follows torch: int8 divides by 127.5 (the 256 codes span 2 max|x|), not by 127."),
        Mistake("zero point with the wrong sign (qmin + round(lo / scale))", lambda x, b, s: _qparams_with(x, b, s, zp_sign=1),
                "the real value lo must map to qmin: zero_point = qmin - round(lo / scale)."),
        Mistake("no eps floor: an all-zero x gives scale 0", lambda x, b, s: _qparams_with(x, b, s, eps=0.0),
                "take max(scale, 1.1920929e-07) (float32 eps, as torch) so a constant tensor still gets a grid."),
    ],
    hints=("affine: widen to 0, scale = (hi - lo) / (qmax - qmin), zero_point = qmin - round(lo / scale), clamped to [qmin, qmax]",
           "symmetric: scale = max(-lo, hi) / ((qmax - qmin) / 2), zero_point = 0; both: scale = max(scale, 1.1920929e-07)"),
    compare=lambda expected, actual: _same_qparams(expected, actual),
    describe=_describe_qparams,
)


def check_qparams(fn):
    """Check ``fn(x, bits, symmetric) -> (scale, zero_point)`` for signed ``bits``-bit codes."""
    return run_check(QPARAMS, fn)


# --- quantize -------------------------------------------------------------------------------------

def _quantize(x, scale, zero_point, bits):
    return quantize(x, scale, zero_point, IntFormat(bits))


def _codes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.int32)


def _v(x, scale):  # x * (1/scale) in float32, as torch
    return x * (1.0 / torch.tensor(scale, dtype=torch.float32))


def _same_codes(expected, actual) -> str | None:
    """Integer tensors of any integer dtype with equal values (the dtype is the learner's choice)."""
    if not isinstance(actual, torch.Tensor):
        if isinstance(actual, np.ndarray) and compare(expected.numpy().astype(np.int64), actual.astype(np.int64)) is None:
            return "right values, but a numpy array; return a torch tensor (torch.from_numpy(...))"
        return f"result should be a torch.Tensor of integer codes, got {type(actual).__name__}"
    if actual.is_floating_point() or actual.dtype == torch.bool:
        if actual.shape == expected.shape and bool((actual.double() == expected.double()).all()):
            return f"right values, but dtype {str(actual.dtype)[6:]}; return integer codes, e.g. with .to(torch.int32)"
        return f"result has dtype {actual.dtype}; return integer codes, e.g. with .to(torch.int32)"
    return compare(expected.to(torch.int64), actual.to(torch.int64))


def tie_features(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> dict:
    """Masks of the positions a quantizer can get wrong for a reason a learner can fix."""
    v = _v(x, scale)
    frac = v - torch.floor(v)
    code = torch.round(v) + zero_point
    return {
        "the code clips at qmax": code > qmax,
        "the code clips at qmin": code < qmin,
        "the code clips (beyond qmin or qmax)": (code > qmax) | (code < qmin),
        "the code is qmin or below (it must end at qmin)": code <= qmin,
        "the code is qmax or above (it must end at qmax)": code >= qmax,
        "x * (1/scale) is an exact tie (k + 0.5)": frac == 0.5,
        "x / scale and x * (1/scale) round differently in float32":
            torch.round(x / torch.tensor(scale, dtype=torch.float32)) != torch.round(v),
        "x < 0": x < 0,
        "x > 0": x > 0,
    }


_ADVICE = {
    "exact tie": "round ties to the even integer with torch.round (not floor(v + 0.5), int(v + 0.5) or half away from zero)",
    "round differently": "compute inv_scale = 1 / scale once and multiply, x * inv_scale, as the task says",
    "clips at qmax": "check qmax = 2**(bits-1) - 1, and clamp last (after adding the zero point)",
    "clips at qmin": "check qmin = -2**(bits-1), and clamp last (after adding the zero point)",
    "clips (": "check qmin = -2**(bits-1) and qmax = 2**(bits-1) - 1, and clamp last",
    "qmin or below": "check qmin = -2**(bits-1): clamp to exactly [qmin, qmax]",
    "qmax or above": "check qmax = 2**(bits-1) - 1: clamp to exactly [qmin, qmax]",
    "clamped to qmax": "clamp the rounded codes to [qmin, qmax] before multiplying by scale",
    "x < 0": "look at what your rounding does below 0 (int() and .int() cut toward zero; floor goes down)",
    "w < 0": "look at what your rounding does below 0 (int() and .int() cut toward zero; floor goes down)",
    "x > 0": "look at what your rounding does above 0",
}


def _advice(where: str) -> str:
    return next((a for key, a in _ADVICE.items() if key in where), "")


def _as_codes(expected, actual):
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return None
    return actual.detach().round().long() if actual.is_floating_point() else actual.long()


def _direction_notes(f: Failure, pair) -> list[str]:
    """Pooled over many cases: are the wrong answers all below, all above, or all nearer to zero?"""
    diffs, toward_zero = [], []

    def per_case(case, expected, mine):
        got = pair(case, expected, mine)
        if got is None or got[0] is None:
            return None
        a, e = got[0].double(), got[1].double()
        wrong = a != e
        diffs.append((a - e)[wrong])
        toward_zero.append((a.abs() < e.abs())[wrong])
        return wrong, {}

    f.pooled(per_case)
    if not diffs or sum(int(d.numel()) for d in diffs) < 3:  # too few wrong values to see a direction
        return []
    d, tz = torch.cat(diffs), torch.cat(toward_zero)
    if bool((d < 0).all()):
        return ["wherever yours is wrong it is too low (rounded down?): torch.round rounds to the nearest, floor always down"]
    if bool((d > 0).all()):
        return ["wherever yours is wrong it is too high (rounded up?): torch.round rounds to the nearest, ceil always up"]
    if bool(tz.all()):
        return ["wherever yours is wrong it is nearer to zero than expected: int(), .int() and torch.trunc cut toward "
                "zero; round with torch.round first"]
    return []


_ARITHMETIC = {  # how the codes come out when v = x / scale is computed another way
    "float64 (x / scale or x * (1/scale))": lambda x, s: x.double() * (1.0 / s),
    "float32 as x / scale": lambda x, s: x / torch.tensor(s, dtype=torch.float32),
}


def _arithmetic_note(f: Failure) -> str | None:
    """Which other arithmetic reproduces every answer the learner gave (a differential probe)."""
    cases = [f.case, *f.spec.probes, *[c for c in f.spec.golden if c is not f.case]]
    mine = [f.actual] + [f.learner(c) for c in cases[1:]]
    matches = []
    for name, v in _ARITHMETIC.items():
        same = True
        for case, m in zip(cases, mine):
            x, s, z, b = case.args
            codes = torch.clamp(torch.round(v(x, s)) + z, *_range(b)).long()
            m = _as_codes(codes, m)
            if m is None or not bool((m == codes).all()):
                same = False
                break
        if same:
            matches.append(name)
    if len(matches) != 1:  # none, or the cases cannot tell them apart: say nothing
        return None
    return (f"every answer of yours matches v = x / scale computed in {matches[0]}; the task (and torch) compute "
            "inv_scale = 1 / scale in float32 and multiply: x * inv_scale")


def _describe_quantize(f: Failure) -> list[str]:
    x, scale, zero_point, bits = f.case.args
    actual = _as_codes(f.expected, f.actual)
    if actual is None:
        return []
    qmin, qmax = _range(bits)
    arithmetic = _arithmetic_note(f)
    notes = [arithmetic] if arithmetic else []

    def per_case(case, expected, mine):
        mine = _as_codes(expected, mine)
        if mine is None:
            return None
        cx, cs, cz, cb = case.args
        return mine != expected.long(), tie_features(cx, cs, cz, *_range(cb))

    if not arithmetic:  # otherwise the arithmetic explains every answer: the positions add nothing
        wrong, features = f.pooled(per_case)
        where = localize(wrong, features) if wrong is not None else None
        offset = _offset_phrase(f.expected, actual, actual != f.expected.long())
        if where:
            notes.append(" ".join(p for p in (offset, where) if p) + (f": {_advice(where)}" if _advice(where) else ""))
        else:
            notes += _direction_notes(f, lambda case, expected, mine: (_as_codes(expected, mine), expected.long()))
            if offset:
                notes.append(offset + " at every wrong position of this case")
    if zero_point != 0:
        at0 = f.with_args(zero_point=0)
        if f.right_on(at0):
            notes.append(f"right with zero_point = 0, wrong with zero_point = {zero_point}: add the zero point once, "
                         "after rounding and before clamping")
    if actual.numel() and (int(actual.max()) > qmax or int(actual.min()) < qmin):
        notes.append(f"your codes run from {int(actual.min())} to {int(actual.max())}, outside [qmin, qmax] = "
                     f"[{qmin}, {qmax}] for {bits} bits")
    return notes


def _quantize_case(rng: np.random.Generator) -> Case:
    bits = int(rng.choice([2, 3, 4, 5, 6, 8, 12, 16]))
    qmin, qmax = _range(bits)
    scale = float(np.float32(rng.uniform(0.01, 0.5)))
    x = rng.normal(0, 3, size=int(rng.integers(1, 40)))
    x[rng.random(x.size) < 0.3] = np.round(x[rng.random(x.size) < 0.3][:0].sum() + 0) if False else x[rng.random(x.size) < 0.3][:0].sum()
    return Case((torch.tensor(x, dtype=torch.float32), scale, int(rng.integers(max(qmin, -8), min(qmax, 8) + 1)), bits))


QUANTIZE = CheckSpec(
    name="quantize",
    reference=_quantize,
    golden=[
        Case((_tensor([-1.0, -0.26, 0.0, 0.24, 1.0]), 0.1, 0, 8), label="zero point 0"),
        Case((_tensor([-1.0, 0.0, 1.0]), 0.05, -20, 8), label="zero point -20"),
        Case((_tensor([100.0, -100.0, 3.0, 0.2]), 0.1, 5, 4), label="clamping to int4 with zero point 5"),
        Case((_tensor([0.25, 0.75, -0.25, 1.25]), 0.5, 0, 8), label="ties go to the even code"),
        Case((_tensor([0.25, 0.75, -0.25, -0.75, 1.25]), 0.5, 3, 8), label="ties with zero point 3"),
        Case((_tensor([-12.15]), 0.1, 0, 8), label="x * (1/scale), not x / scale: -12.15 / 0.1"),
        Case((_tensor([-1.0, -0.5, 0.0, 0.5, 0.7]), 0.5, 0, 2), label="2 bits: codes -2..1"),
        Case((_tensor([-2.0, 1.5, 1.75, 0.25]), 0.5, -1, 3), label="3 bits, range ends hit exactly"),
        Case((_tensor([-300.0, 2.5, 300.0]), 0.125, 100, 12), label="12 bits"),
        Case((_tensor([-5000.0, 0.3, 5000.0]), 0.1, -7, 16), label="16 bits"),
    ],
    random_case=lambda rng: _quantize_case(rng),
    probes=[Case((_tensor([8.85, -9.95, -8.15, 8.15, 1.0]), 0.1, 0, 8),
                 label="near ties that float32 x * (1/scale), float32 x / scale and float64 round apart")],
    mistakes=[
        Mistake("qmax = 2**bits instead of 2**(bits-1) - 1",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)) + z, _range(b)[0], 2**b)),
                "signed b-bit codes end at 2**(b-1) - 1 (int4: 7)."),
        Mistake("the unsigned range 0 .. 2**bits - 1 for signed codes",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)) + z, 0, 2**b - 1)),
                "signed codes start at qmin = -2**(bits-1)."),
        Mistake("forgot the zero point", lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)), *_range(b))),
                "add zero_point after rounding: q = round(x * (1/scale)) + zero_point, then clamp."),
        Mistake("clamped before adding the zero point",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)), *_range(b)) + z),
                "clamp last: the codes (after + zero_point) must lie in [qmin, qmax]."),
        Mistake("clamped x itself to [qmin, qmax] (the wrong space) instead of the codes",
                lambda x, s, z, b: _codes(torch.round(_v(torch.clamp(x, *_range(b)), s)) + z),
                "qmin and qmax are codes, not real values: clamp round(x * (1/scale)) + zero_point."),
        Mistake("truncated toward zero (.int() / int()) instead of rounding",
                lambda x, s, z, b: _codes(torch.clamp(torch.trunc(_v(x, s)) + z, *_range(b))),
                "converting to int cuts the fraction off; round first with torch.round."),
        Mistake("subtracted the zero point instead of adding it",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)) - z, *_range(b))),
                "q = round(x * (1/scale)) + zero_point: dequantize subtracts it, quantize adds it."),
    ],
    hints=("q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax) with torch.round (ties to even), as integer codes",),
    compare=_same_codes,
    describe=_describe_quantize,
)


def check_quantize(fn):
    """Check ``fn(x, scale, zero_point, bits) -> codes`` for signed ``bits``-bit codes."""
    return run_check(QUANTIZE, fn)


# --- dequantize -----------------------------------------------------------------------------------

def _same_dequantized(expected, actual) -> str | None:
    """float32 within a few float32 roundings of the terms (q*s - z*s is a correct way to write it)."""
    tol = 0.0
    if isinstance(expected, torch.Tensor) and expected.numel():
        tol = 4 * FLOAT32_EPS * float(expected.abs().max())
    return compare(expected, actual, atol=tol + 1e-12, rtol=1e-6)


def _describe_dequantize(f: Failure) -> list[str]:
    q, scale, zero_point = f.case.args
    notes = []
    a = f.actual
    if isinstance(a, torch.Tensor) and not a.is_floating_point() and a.shape == f.expected.shape:
        notes.append(f"your result has integer dtype {str(a.dtype)[6:]}: the codes times scale are real numbers; "
                     "convert with .float() before multiplying")
    elif isinstance(a, torch.Tensor) and a.shape == f.expected.shape and a.is_floating_point():
        e, a64 = f.expected.double(), a.detach().double()
        d = a64 - e
        if d.numel() and bool((d - d[0]).abs().max() <= 1e-5 * (1 + e.abs().max())):
            k = float(d[0]) / scale
            notes.append(f"every value off by {float(d[0]):+.6g} = {k:+.4g} x scale: the zero point is handled wrongly "
                         "(x_hat = (q - zero_point) * scale)")
        else:
            nz = e.abs() > 1e-12
            if bool(nz.any()):
                r = a64[nz] / e[nz]
                if bool(((r - r[0]).abs() <= 1e-5 * r[0].abs()).all()):
                    notes.append(f"every value off by a factor {factor(float(r[0]))}: multiply (q - zero_point) by scale")
    if zero_point != 0:
        at0 = f.with_args(zero_point=0)
        if f.right_on(at0):
            notes.append(f"right with zero_point = 0, wrong with zero_point = {zero_point}: subtract it from q, "
                         "before multiplying by scale")
    return notes


DEQUANTIZE = CheckSpec(
    name="dequantize",
    reference=lambda q, scale, zero_point: dequantize(q, scale, zero_point),
    golden=[
        Case((torch.tensor([-122, 0, 127]), 0.1, 0), label="zero point 0"),
        Case((torch.tensor([-40, -20, 0, 3]), 0.05, -20), label="zero point -20"),
        Case((torch.tensor([0, 7, -8]), 0.5, 3), label="int4 codes"),
        Case((torch.tensor([-2, 1, 0], dtype=torch.int32), 0.25, 1), label="2-bit int32 codes"),
        Case((torch.tensor([-32768, 32767, 5]), 0.001, -100), label="16-bit codes"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.integers(-128, 128, size=int(rng.integers(1, 30)))),
                                  float(np.float32(rng.uniform(0.001, 1))), int(rng.integers(-30, 30)))),
    mistakes=[
        Mistake("forgot the zero point", lambda q, s, z: q.float() * s, "x_hat = (q - zero_point) * scale."),
        Mistake("added the zero point instead of subtracting it", lambda q, s, z: (q + z).float() * s,
                "quantize added zero_point, so dequantize subtracts it: (q - zero_point) * scale."),
        Mistake("divided by scale", lambda q, s, z: (q - z).float() / s, "codes count steps of size scale: multiply."),
        Mistake("subtracted the zero point after scaling", lambda q, s, z: q.float() * s - z,
                "zero_point is in code units: subtract it from q before multiplying by scale."),
    ],
    hints=("x_hat = (q - zero_point) * scale, as a float32 tensor",),
    compare=_same_dequantized,
    describe=_describe_dequantize,
)


def check_dequantize(fn):
    """Check ``fn(q, scale, zero_point) -> x_hat`` (a float32 tensor)."""
    return run_check(DEQUANTIZE, fn)


# --- per-channel ----------------------------------------------------------------------------------

def _per_channel(w, bits):
    fmt = IntFormat(bits)
    return fake_quantize(w, *choose_qparams(w, fmt, PerChannel(0)), fmt)


def _per_channel_with(w, bits, max_abs, *, div=None, clamp=True):
    qmin, qmax = _range(bits)
    scale = torch.clamp(max_abs / ((qmax - qmin) / 2 if div is None else div), min=FLOAT32_EPS)
    q = torch.round(w * (1.0 / scale))
    return (torch.clamp(q, qmin, qmax) if clamp else q) * scale


def _same_floats(expected, actual) -> str | None:
    return compare(expected, actual, atol=1e-12, rtol=1e-6)


def _channel_features(w, bits) -> dict:
    qmin, qmax = _range(bits)
    max_abs = w.abs().amax(dim=1, keepdim=True)
    scale = torch.clamp(max_abs / ((qmax - qmin) / 2), min=FLOAT32_EPS)
    v = w * (1.0 / scale)
    return {
        "the code must be clamped to qmax (a row's largest positive value)": torch.round(v) > qmax,
        "w * (1/scale) is an exact tie (k + 0.5)": (v - torch.floor(v)) == 0.5,
        "w / scale and w * (1/scale) round differently": torch.round(w / scale) != torch.round(v),
        "the row is all zeros": (max_abs == 0).expand_as(w),
        "w < 0": w < 0,
    }


def _describe_per_channel(f: Failure) -> list[str]:
    w, bits = f.case.args
    a = f.actual
    notes = []
    if not isinstance(a, torch.Tensor) or a.shape != f.expected.shape or not a.is_floating_point():
        return notes
    if bool(torch.isnan(a).any()):
        notes.append("NaN in your result" + (" where a row is all zeros: floor the scale at 1.1920929e-07"
                                             if bool((w.abs().amax(dim=1) == 0).any()) else ""))

    def per_case(case, expected, mine):
        if not isinstance(mine, torch.Tensor) or mine.shape != expected.shape or not mine.is_floating_point():
            return None
        return _wrong_mask(expected, mine.to(torch.float32), 1e-12, 1e-6), _channel_features(*case.args)

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None else None
    if where:
        notes.append("wrong " + where + (f": {_advice(where)}" if _advice(where) else ""))
    scale_of = lambda case: torch.clamp(case.args[0].abs().amax(dim=1, keepdim=True)  # noqa: E731
                                        / ((2 ** case.args[1] - 1) / 2), min=FLOAT32_EPS)
    notes += _direction_notes(f, lambda case, expected, mine: (
        (mine.detach().float() / scale_of(case)).round() if isinstance(mine, torch.Tensor) and mine.shape == expected.shape
        else None, (expected / scale_of(case)).round()))
    bad_rows = (~_close(f.expected, a.detach().float(), 1e-12, 1e-6)).any(dim=1).nonzero()
    if w.shape[0] > 1 and len(bad_rows):
        r = int(bad_rows[0])
        one = Case((w[r:r + 1].clone(), bits))
        if f.right_on(one):
            notes.append("right for a single row, wrong once there are several: one scale per row, "
                         "w.abs().amax(dim=1, keepdim=True)")
    return notes


PER_CHANNEL = CheckSpec(
    name="per_channel",
    reference=_per_channel,
    golden=[
        Case((_tensor([[0.1, 5.0, -0.2], [0.3, -4.0, 0.05], [0.2, 1.0, 0.0]]), 4), label="a square weight"),
        Case((_tensor([[1.0, -0.5, 0.2], [10.0, 2.0, -3.0]]), 4), label="two rows of very different size"),
        Case((_tensor([[0.0, 0.0], [1.0, -1.0]]), 8), label="an all-zero row"),
        Case((_tensor([[1.5, -0.5, 0.25], [-3.0, 1.0, 0.5]]), 2), label="2 bits: codes -2..1"),
        Case((_tensor([[7.5, 2.5, -1.5, 0.5]]), 4), label="one row, ties at every value"),
        Case((_tensor([[0.3, -2.0, 1.1], [4.0, 4.0, 4.0]]), 3), label="3 bits, a constant row"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.normal(0, 1, size=(int(rng.integers(1, 7)), int(rng.integers(1, 9))))
                                               * rng.uniform(0.1, 10, size=(1, 1)), dtype=torch.float32),
                                  int(rng.choice([2, 3, 4, 5, 8, 12])))),
    probes=[Case((_tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]]), 4), label="a zero row, 4 bits"),
            Case((_tensor([[0.0], [0.0], [3.0]]), 3), label="one column, two zero rows")],
    mistakes=[
        Mistake("reduced over the wrong axis (one scale per column)",
                lambda w, b: _per_channel_with(w, b, w.abs().amax(dim=0, keepdim=True)),
                "one scale per output channel = per row: w.abs().amax(dim=1, keepdim=True)."),
        Mistake("forgot keepdim=True: the (C_out,) scales broadcast along the columns",
                lambda w, b: _per_channel_with(w, b, w.abs().amax(dim=1)),
                "a (C_out,) tensor lines up with the last dimension; keep it (C_out, 1) with keepdim=True."),
        Mistake("one scale for the whole tensor (per-tensor)", lambda w, b: _per_channel_with(w, b, w.abs().max()),
                "compute max|w| separately for each row."),
        Mistake("no eps floor: an all-zero row gives 0 / 0 = NaN", lambda w, b: _per_channel_with_no_eps(w, b),
                "clamp the scale to at least 1.1920929e-07 (torch's eps)."),
        Mistake("scale = max|w| / qmax instead of max|w| / ((qmax - qmin) / 2)",
                lambda w, b: _per_channel_with(w, b, w.abs().amax(dim=1, keepdim=True), div=_range(b)[1]),
                "the symmetric step is max|w| / ((qmax - qmin) / 2): 127.5 for 8 bits, 7.5 for 4 bits."),
        Mistake("returned the codes, not the fake-quantized weight",
                lambda w, b: _per_channel(w, b) / torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((2**b - 1) / 2), min=FLOAT32_EPS),
                "multiply the clamped codes by their row's scale: w_hat = q * scale."),
    ],
    hints=("scale = max(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), 1.1920929e-07), zero_point = 0",
           "w_hat = clamp(round(w * (1 / scale)), qmin, qmax) * scale"),
    compare=_same_floats,
    describe=_describe_per_channel,
)


def _per_channel_with_no_eps(w, bits):
    qmin, qmax = _range(bits)
    scale = w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


def check_per_channel(fn):
    """Check ``fn(w, bits) -> w_hat``: symmetric fake quantization with one scale per row of ``w``."""
    return run_check(PER_CHANNEL, fn)


# --- stochastic rounding ----------------------------------------------------------------------------

def _stochastic_round(v, generator):
    lower = torch.floor(v)
    return lower + (torch.rand(v.shape, generator=generator) < (v - lower)).float()


def _same_distribution(expected, actual) -> str | None:
    """Rows of ``v`` hold one repeated value; compare the two samples row by row, statistically.

    Each row of ``actual`` must hold only the integers the reference used in that row, and its
    round-up frequency must agree with the reference's within 5 standard errors of a two-sample test.
    """
    if not isinstance(actual, torch.Tensor) or not actual.is_floating_point():
        what = f"dtype {actual.dtype}" if isinstance(actual, torch.Tensor) else type(actual).__name__
        return f"result should be a float tensor of integers like v, got {what}"
    if actual.shape != expected.shape:
        return f"result has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    for row, (e, a) in enumerate(zip(expected, actual)):
        lo = float(e.min())
        hi = lo + 1.0 if float(e.max()) == lo else float(e.max())
        allowed = (a == lo) | (a == hi) if float(e.max()) > lo else a == lo
        if not bool(allowed.all()):
            bad = float(a[~allowed][0])
            return f"row {row}: got {bad}, but each value must become the integer just below or just above it"
        p_e, p_a = float((e - lo).mean()), float((a - lo).mean())
        tol = 5 * math.sqrt(2 * max(p_e * (1 - p_e), 1e-4) / e.numel()) + 1e-12
        if abs(p_a - p_e) > tol:
            return (f"row {row}: rounded up {p_a:.3f} of the time, the reference {p_e:.3f} (about the fractional "
                    f"part; allowed difference {tol:.3f}); stochastic rounding must be unbiased")
    return None


def _rows(values, n: int = 4000) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, n).contiguous()  # (rows,) -> (rows, n)




STOCHASTIC_ROUND = CheckSpec(
    name="stochastic_round",
    reference=_stochastic_round,
    golden=[
        Case((_rows([2.3, -1.7, 0.5, 4.0, -0.25]), torch.Generator().manual_seed(0)), label="five values, 4000 times each"),
        Case((_rows([0.9, 0.1, -3.5]), torch.Generator().manual_seed(1)), label="fractions near 0 and 1"),
    ],
    random_case=lambda rng: Case((_rows(np.round(rng.uniform(-5, 5, size=3), 2)), torch.Generator().manual_seed(int(rng.integers(1e6))))),
    n_random=5,
    mistakes=[
        Mistake("round(v + u) with u uniform in [0, 1): biased up by half a step",
                lambda v, g: torch.round(v + torch.rand(v.shape, generator=g)),
                "round(v + u) rounds up whenever frac + u >= 0.5; use floor(v + u), or floor(v) + (u < frac)."),
        Mistake("no noise: floor(v + 0.5) is ordinary rounding", lambda v, g: torch.floor(v + 0.5),
                "draw u = torch.rand(v.shape, generator=generator) and round up when u < v - floor(v)."),
        Mistake("rounded up with probability 1/2 whatever the fraction",
                lambda v, g: torch.floor(v) + (torch.rand(v.shape, generator=g) < 0.5).float(),
                "the chance of rounding up must be the fractional part v - floor(v), so the mean stays v."),
        Mistake("compared the wrong way: rounds up with probability 1 - frac",
                lambda v, g: torch.floor(v) + (torch.rand(v.shape, generator=g) > (v - torch.floor(v))).float(),
                "round up when u < frac: a value just above an integer should almost always round down."),
        Mistake("noise in [-0.5, 0.5) and then floor", lambda v, g: torch.floor(v + torch.rand(v.shape, generator=g) - 0.5),
                "floor(v + u) needs u in [0, 1); centred noise is for round(), not floor()."),
    ],
    hints=("lower = floor(v); round up when a uniform u in [0, 1) is below v - lower",),
    compare=_same_distribution,
    describe=lambda f: _describe_stochastic(f),
)


def _describe_stochastic(f: Failure) -> list[str]:
    v = f.case.args[0]
    a = f.actual
    if not isinstance(a, torch.Tensor) or a.shape != v.shape or not a.is_floating_point():
        return []
    rows_ok = torch.tensor([_same_distribution(e[None], x[None]) is None for e, x in zip(f.expected, a.detach())])
    notes = []
    where = localize(~rows_ok, {"v < 0": v[:, 0] < 0, "v > 0": v[:, 0] > 0, "v is already an integer": v[:, 0] == v[:, 0].round()})
    if where:
        notes.append("wrong " + where.replace("position", "row").replace("every other row is", "every other row is"))
    frac = v[:, 0] - torch.floor(v[:, 0])
    constant_rows = bool(((a == a[:, :1]).all(dim=1) | (frac == 0)).all())
    if constant_rows and bool(((frac > 0.2) & (frac < 0.8)).any()):
        notes.append("each row of equal values came out all rounded the same way: draw one u per value, "
                     "u = torch.rand(v.shape, generator=generator)")
    return notes


def check_stochastic_round(fn):
    """Check ``fn(v, generator) -> float tensor``: unbiased stochastic rounding (by statistics)."""
    return run_check(STOCHASTIC_ROUND, fn)


# --- pack two 4-bit codes per byte ----------------------------------------------------------------------

def _pack4(q):
    return pack(q, 4)


def _pack4_with(q, swap=False, halves=False):
    q = torch.nn.functional.pad(q.to(torch.int32), (0, q.numel() % 2))  # (n,) -> (n rounded up to even,)
    first, second = (q[: q.numel() // 2], q[q.numel() // 2:]) if halves else (q[0::2], q[1::2])
    if swap:
        first, second = second, first
    return (first | (second << 4)).to(torch.uint8)


PACK4 = CheckSpec(
    name="pack4",
    reference=_pack4,
    golden=[
        Case((torch.tensor([1, 2]),), label="one byte: 1 | 2 << 4 = 33"),
        Case((torch.tensor([15, 0, 3, 12]),), label="two bytes"),
        Case((torch.tensor([5, 6, 7]),), label="odd length: pad with a 0 code"),
        Case((torch.tensor([0, 15, 15, 0, 9, 4]),), label="three bytes"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.integers(0, 16, size=int(rng.integers(1, 40)))),)),
    mistakes=[
        Mistake("nibble order swapped (first code in the high nibble)", lambda q: _pack4_with(q, swap=True),
                "qedu puts the first code in the low 4 bits: byte = q[0] | q[1] << 4."),
        Mistake("paired the first half with the second half instead of neighbours", lambda q: _pack4_with(q, halves=True),
                "pair neighbours: q[0::2] (low nibbles) with q[1::2] (high nibbles)."),
    ],
    hints=("pad to an even length, then byte = q[0::2] | (q[1::2] << 4), as torch.uint8",),
    describe=lambda f: _describe_pack4(f),
)


def _describe_pack4(f: Failure) -> list[str]:
    (q,) = f.case.args
    notes = []
    a = f.actual
    if q.numel() % 2 and q.numel() > 1:
        even = Case((q[:-1].clone(),))
        if f.right_on(even):
            notes.append(f"right for an even number of codes, wrong for an odd one ({q.numel()}): pad with one 0 code "
                         "at the end, so the last byte holds the last code in its low nibble")
    for lone, name in (([5, 0], "first"), ([0, 5], "second")):
        mine = f.learner(Case((torch.tensor(lone),)))
        want = _pack4(torch.tensor(lone))
        if isinstance(mine, torch.Tensor) and mine.numel() == 1 and int(mine.reshape(-1)[0]) != int(want[0]):
            notes.append(f"a lone {name} code 5 ({lone}) packs to {int(mine.reshape(-1)[0])} with your function, "
                         f"not {int(want[0])}" + (": shift the second code left by 4 (q[1::2] << 4, or * 16)"
                                                 if name == "second" else ": the first code goes in the low 4 bits as it is"))
            break
    if isinstance(a, torch.Tensor) and a.shape == f.expected.shape and not a.is_floating_point():
        wrong = f.expected.to(torch.int64) != a.to(torch.int64)
        if not bool(wrong.any()):
            return notes
        e = f.expected.to(torch.int64)[wrong]
        a64 = a.to(torch.int64)[wrong]
        if bool(((a64 & 15) == (e >> 4)).all()) and bool(((a64 >> 4) == (e & 15)).all()):
            notes.append("the two nibbles of each byte are swapped: the first code goes in the low 4 bits")
        elif bool(((a64 & 15) == (e & 15)).all()):
            notes.append("the low nibbles (first codes) are right; the high nibbles (second codes) are not: "
                         "shift the second code left by 4 (q[1::2] << 4, or * 16)")
        elif bool(((a64 >> 4) == (e >> 4)).all()):
            notes.append("the high nibbles (second codes) are right; the low nibbles (first codes) are not")
    return notes


def check_pack4(fn):
    """Check ``fn(q) -> uint8 tensor``: two 4-bit codes per byte, first code in the low nibble."""
    return run_check(PACK4, fn)
