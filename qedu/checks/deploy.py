"""Checks for lesson 11's exercises: TFLite's fixed-point multiplier, an integer linear layer with
zero points, and the population stability index (PSI).

After a mismatch a classic mistake is named only when a second probe confirms it (the framework's rule);
otherwise the describe probes say what differs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, compare, run_check
from qedu.drift import psi as _psi
from qedu.integer import quantize_multiplier

__all__ = ["quantize_multiplier_reference", "integer_linear_reference", "psi_reference", "QUANTIZE_MULTIPLIER",
           "INTEGER_LINEAR", "PSI", "check_quantize_multiplier", "check_integer_linear", "check_psi"]


# --- 1. the fixed-point multiplier: real = M0 * 2^(shift - 31) -----------------------------------

def quantize_multiplier_reference(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier`` (:func:`qedu.integer.quantize_multiplier`): ``(M0, shift)``."""
    return quantize_multiplier(real)


def _not_normalised(real):
    frac, shift = math.frexp(real)
    return math.floor(frac * 2**31 + 0.5), shift  # 2^31 does not fit an int32


def _truncated(real):
    frac, shift = math.frexp(real)
    q = math.floor(frac * 2**31)
    return (q // 2, shift + 1) if q == 2**31 else (q, shift)


def _half_even(real):
    frac, shift = math.frexp(real)
    q = round(frac * 2**31)  # Python's round: ties to even
    return (q // 2, shift + 1) if q == 2**31 else (q, shift)


def _scaled_2_30(real):
    frac, shift = math.frexp(real)
    q = math.floor(frac * 2**30 + 0.5)
    return (q // 2, shift + 1) if q == 2**30 else (q, shift)


def _mult_case(rng: np.random.Generator) -> Case:
    real = float(10 ** rng.uniform(-6, 0.5))
    return Case((real,), label=f"real = {real:.6g}")


def _describe_multiplier(f: Failure) -> list[str]:
    a, e = f.actual, f.expected
    if not (isinstance(a, tuple) and len(a) == 2 and all(isinstance(v, (int, np.integer)) for v in a)):
        return ["return a tuple of two Python ints (M0, shift), e.g. (1073741824, 0) for 0.5"]
    m0, shift = int(a[0]), int(a[1])
    notes = []
    if m0 != 0 and not 2**30 <= m0 < 2**31:
        notes.append(f"M0 = {m0} is outside [2^30, 2^31): normalise the fraction into [0.5, 1) before scaling by 2^31")
    real = f.case.args[0]
    if m0 and abs(m0 * 2.0 ** (shift - 31) - real) > real * 2**-30:
        notes.append(f"M0 * 2^(shift - 31) = {m0 * 2.0 ** (shift - 31)!r}, not the multiplier {real!r}")
    elif m0 != e[0] and m0 and abs(m0 - e[0]) == 1:
        notes.append("M0 is one off: round frac * 2^31 to nearest, ties away from zero (floor(x + 0.5))")
    return notes


QUANTIZE_MULTIPLIER = CheckSpec(
    name="quantize_multiplier",
    reference=quantize_multiplier_reference,
    golden=[
        Case((0.5,), label="0.5 = 2^30 * 2^(0 - 31)"),
        Case((0.75,), label="0.75"),
        Case((0.25,), label="0.25: shift -1"),
        Case((0.1,), label="0.1"),
        Case((1 - 2**-40,), label="1 - 2^-40: the fraction rounds up to 2^31"),
        Case((0.5 + 2**-32,), label="0.5 + 2^-32: frac * 2^31 ends in exactly .5"),
    ],
    random_case=_mult_case,
    probes=[  # more cases where the rare branches matter, to confirm a mistake on a second input
        Case((1 - 2**-35,), label="1 - 2^-35 rounds up to 2^31"),
        Case((0.5 - 2**-36,), label="0.5 - 2^-36 rounds up to 2^31"),
        Case((0.75 + 2**-32,), label="0.75 + 2^-32: a tie"),
        Case((0.375 + 2**-33,), label="0.375 + 2^-33: a tie"),
    ],
    mistakes=[
        Mistake("a fraction that rounds up to 2^31 was kept (M0 must fit an int32)", _not_normalised,
                "if round(frac * 2^31) == 2^31, halve it to 2^30 and add 1 to the shift."),
        Mistake("truncated frac * 2^31 instead of rounding it", _truncated,
                "M0 = floor(frac * 2^31 + 0.5): round to nearest, or every multiplier is a little too small."),
        Mistake("Python's round() rounds ties to even; TFLite rounds ties away from zero", _half_even,
                "use math.floor(frac * 2**31 + 0.5) (TFLite's std::round), not round()."),
        Mistake("scaled the fraction by 2^30 instead of 2^31", _scaled_2_30,
                "M0 is a Q31 number: frac in [0.5, 1) times 2^31 gives M0 in [2^30, 2^31)."),
    ],
    hints=("frac, shift = math.frexp(real) gives real = frac * 2**shift with frac in [0.5, 1).",
           "M0 = floor(frac * 2**31 + 0.5); if M0 == 2**31: M0 //= 2 and shift += 1."),
    describe=lambda f: _describe_multiplier(f),
)


def check_quantize_multiplier(fn):
    """Check ``fn(real) -> (M0, shift)`` with ``real = M0 * 2^(shift - 31)``, ``M0`` in ``[2^30, 2^31)``."""
    return run_check(QUANTIZE_MULTIPLIER, fn)


# --- 2. an integer linear layer with zero points ----------------------------------------------------

def integer_linear_reference(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    """``acc[n, o] = sum_k (q_x[n, k] - z_x) (q_w[o, k] - z_w) + bias_q[o]`` as int32."""
    acc = (q_x.to(torch.int64) - zero_point_x) @ (q_w.to(torch.int64) - zero_point_w).T  # (N, K) @ (K, C_out)
    return (acc + bias_q.to(torch.int64)).to(torch.int32)


def _no_zx(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return integer_linear_reference(q_x, 0, q_w, zero_point_w, bias_q)


def _no_zw(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return integer_linear_reference(q_x, zero_point_x, q_w, 0, bias_q)


def _no_constant(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    x, w = q_x.to(torch.int64), q_w.to(torch.int64)
    acc = x @ w.T - zero_point_w * x.sum(1, keepdim=True) - zero_point_x * w.sum(1)[None, :]  # K z_x z_w forgotten
    return (acc + bias_q.to(torch.int64)).to(torch.int32)


def _no_bias(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return integer_linear_reference(q_x, zero_point_x, q_w, zero_point_w, torch.zeros_like(bias_q))


def _int16(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    acc = (q_x.to(torch.int64) - zero_point_x) @ (q_w.to(torch.int64) - zero_point_w).T
    return (acc.to(torch.int16).to(torch.int64) + bias_q.to(torch.int64)).to(torch.int32)  # wrapped in 16 bits


def _lin_case(rng: np.random.Generator) -> Case:
    n, k, c = int(rng.integers(1, 5)), int(rng.integers(2, 40)), int(rng.integers(1, 6))
    q_x = torch.tensor(rng.integers(0, 256, (n, k)), dtype=torch.uint8)
    q_w = torch.tensor(rng.integers(-127, 128, (c, k)), dtype=torch.int8)
    bias = torch.tensor(rng.integers(-5000, 5000, c), dtype=torch.int32)
    return Case((q_x, int(rng.integers(0, 256)), q_w, int(rng.integers(-20, 21)), bias))


def _describe_linear(f: Failure) -> list[str]:
    a = f.actual
    if not isinstance(a, torch.Tensor) or a.shape != f.expected.shape:
        return []
    notes = []
    if a.dtype in (torch.uint8, torch.int8, torch.int16):
        notes.append(f"your accumulator is {str(a.dtype)[6:]}: int8 x int8 products need 16 bits and their sum "
                     "needs 32; cast to int32 (or int64) before multiplying")
    if (f.arg("zero_point_x") or f.arg("zero_point_w")) and f.right_on(f.with_args(zero_point_x=0, zero_point_w=0)):
        notes.append("right when both zero points are 0: the error is in a zero-point term")
    return notes


INTEGER_LINEAR = CheckSpec(
    name="integer_linear",
    reference=integer_linear_reference,
    golden=[
        Case((torch.tensor([[3, 0, 5]], dtype=torch.uint8), 1, torch.tensor([[1, -2, 2], [0, 1, -1]], dtype=torch.int8),
              0, torch.tensor([0, 0], dtype=torch.int32)), label="z_x = 1, symmetric weights, no bias"),
        Case((torch.tensor([[3, 0, 5]], dtype=torch.uint8), 1, torch.tensor([[1, -2, 2], [0, 1, -1]], dtype=torch.int8),
              2, torch.tensor([10, -10], dtype=torch.int32)), label="both zero points and a bias"),
        Case((torch.tensor([[255, 255, 255, 255]], dtype=torch.uint8), 0, torch.tensor([[127, 127, 127, 127]], dtype=torch.int8),
              0, torch.tensor([0], dtype=torch.int32)), label="largest codes: 4 * 255 * 127 needs more than 16 bits"),
    ],
    random_case=_lin_case,
    mistakes=[
        Mistake("forgot the input zero point z_x", _no_zx, "subtract z_x from every input code: (q_x - z_x)."),
        Mistake("forgot the weight zero point z_w", _no_zw, "subtract z_w from every weight code: (q_w - z_w)."),
        Mistake("dropped the constant term K * z_x * z_w of the expansion", _no_constant,
                "sum (q_x - z_x)(q_w - z_w) = sum q_x q_w - z_w sum q_x - z_x sum q_w + K z_x z_w."),
        Mistake("forgot to add the int32 bias", _no_bias, "add bias_q[o] to every row of the accumulator."),
        Mistake("accumulated in 16 bits: the sum wrapped around", _int16,
                "accumulate in int32: a sum of K products of up to 255 * 127 overflows int16."),
    ],
    hints=("cast the codes to int32 (or int64) first: (q_x.long() - z_x) @ (q_w.long() - z_w).T + bias_q, then .to(torch.int32).",),
    describe=lambda f: _describe_linear(f),
)


def check_integer_linear(fn):
    """Check ``fn(q_x, zero_point_x, q_w, zero_point_w, bias_q) -> int32 (N, C_out)`` accumulator."""
    return run_check(INTEGER_LINEAR, fn)


# --- 3. the population stability index ---------------------------------------------------------------

def psi_reference(expected, actual, floor: float = 1e-4) -> float:
    """``sum_i (a_i - e_i) ln(a_i / e_i)`` over shares floored at ``floor`` (:func:`qedu.drift.psi`)."""
    return _psi(expected, actual, floor=floor)


def _shares(x, floor):
    x = torch.as_tensor(x).double()
    return (x / x.sum()).clamp(min=floor)


def _no_normalise(expected, actual, floor=1e-4):
    e, a = torch.as_tensor(expected).double().clamp(min=floor), torch.as_tensor(actual).double().clamp(min=floor)
    return float(((a - e) * torch.log(a / e)).sum())


def _no_floor(expected, actual, floor=1e-4):
    e, a = _shares(expected, 0.0), _shares(actual, 0.0)
    return float(((a - e) * torch.log(a / e)).sum())


def _kl_only(expected, actual, floor=1e-4):
    e, a = _shares(expected, floor), _shares(actual, floor)
    return float((a * torch.log(a / e)).sum())


def _log10(expected, actual, floor=1e-4):
    e, a = _shares(expected, floor), _shares(actual, floor)
    return float(((a - e) * torch.log10(a / e)).sum())


def _flipped(expected, actual, floor=1e-4):
    e, a = _shares(expected, floor), _shares(actual, floor)
    return float(((a - e) * torch.log(e / a)).sum())


def _psi_case(rng: np.random.Generator) -> Case:
    bins = int(rng.integers(3, 12))
    e = torch.tensor(rng.integers(0, 60, bins), dtype=torch.float64) + 1
    a = torch.tensor(rng.integers(0, 60, bins), dtype=torch.float64)
    a[int(rng.integers(0, bins))] += 5  # never all zero
    if rng.random() < 0.4:
        a[int(rng.integers(0, bins))] = 0  # an empty bin: where the floor matters
    return Case((e, a))


def _same_psi(expected, actual) -> str | None:
    """Numbers equal within 1e-9 + 1e-6 relative; an infinite or NaN answer equals only the same kind."""
    if isinstance(actual, torch.Tensor) and actual.numel() == 1 and actual.is_floating_point():
        actual = actual.item()
    if isinstance(actual, (float, int, np.floating, np.integer)) and not isinstance(actual, bool) and isinstance(
            expected, float) and not (math.isfinite(expected) and math.isfinite(float(actual))):
        same = (math.isnan(expected) and math.isnan(actual)) or expected == float(actual)
        return None if same else f"result: expected {expected!r}, got {float(actual)!r}"
    return compare(expected, actual, 1e-9, 1e-6)


def _describe_psi(f: Failure) -> list[str]:
    a = f.actual
    if isinstance(a, torch.Tensor) and a.numel() == 1:
        a = a.item()
    if not isinstance(a, (int, float)) or isinstance(a, bool):
        return []
    notes = []
    if math.isinf(a) or math.isnan(a):
        notes.append("an empty bin gives ln(0): floor every share at `floor` before taking the log")
    elif a < 0:
        notes.append("PSI is never negative: each term (a - e) ln(a / e) is >= 0; check the order inside the log")
    same = torch.tensor([1.0, 2.0, 3.0])
    v = f.learner(Case((same, 2 * same)))
    v = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
    if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > 1e-9:
        notes.append("two histograms with the same shares (one twice the other) should give 0: divide counts by their total")
    return notes


PSI = CheckSpec(
    name="psi",
    reference=psi_reference,
    golden=[
        Case((torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])), label="identical: 0"),
        Case((torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])), label="0.4 ln 1.8 - 0.4 ln 0.2"),
        Case((torch.tensor([10.0, 30.0, 60.0]), torch.tensor([20.0, 20.0, 10.0])), label="counts, not shares"),
        Case((torch.tensor([25.0, 25.0, 25.0, 25.0]), torch.tensor([50.0, 50.0, 0.0, 0.0])), label="two empty bins"),
    ],
    random_case=_psi_case,
    mistakes=[
        Mistake("used the counts without normalising them to shares", _no_normalise,
                "divide each histogram by its total first: e / e.sum(), a / a.sum()."),
        Mistake("no floor: an empty bin makes ln(a / e) infinite", _no_floor,
                "clamp the shares at `floor` (1e-4) before the log."),
        Mistake("computed KL(a || e) = sum a ln(a / e), not PSI", _kl_only,
                "PSI weights each log ratio by (a - e), which makes it symmetric: KL(a||e) + KL(e||a)."),
        Mistake("used log10 instead of the natural log", _log10, "torch.log is ln; the 0.1 / 0.25 rules of thumb assume ln."),
        Mistake("the log ratio is upside down: ln(e / a)", _flipped, "(a - e) * ln(a / e): both factors have the same sign."),
    ],
    hints=("e = expected / expected.sum(), a = actual / actual.sum(), both .clamp(min=floor); "
           "return float(((a - e) * torch.log(a / e)).sum()).",),
    compare=lambda e, a: _same_psi(e, a),
    describe=lambda f: _describe_psi(f),
)


def check_psi(fn):
    """Check ``fn(expected, actual, floor=1e-4) -> float``: the population stability index of two histograms."""
    return run_check(PSI, fn)
