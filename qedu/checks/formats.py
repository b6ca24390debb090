"""Checks for the exercises of lesson 01 (number formats).

* :func:`check_int_range`: ``fn(bits, signed) -> (qmin, qmax)``
* :func:`check_exmy_value`: ``fn(sign, exponent, mantissa, exp_bits, man_bits) -> float``
* :func:`check_float_max`: ``fn(exp_bits, man_bits, special) -> float``
* :func:`check_round_to_exmy`: ``fn(x, exp_bits, man_bits) -> float32 tensor``

The references are qedu's own :mod:`qedu.formats`; after a mismatch each check names a classic
mistake only when a second probe confirms it, else its probes describe what differs.
"""
from __future__ import annotations

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, _close, localize, run_check
from qedu.formats import FloatFormat, IntFormat, cast, decode

__all__ = ["check_int_range", "check_exmy_value", "check_float_max", "check_round_to_exmy",
           "INT_RANGE", "EXMY_VALUE", "FLOAT_MAX", "ROUND_TO_EXMY"]


# --- integer ranges --------------------------------------------------------------------------------

def _int_range(bits, signed):
    fmt = IntFormat(bits, signed=signed)
    return (fmt.qmin, fmt.qmax)


INT_RANGE = CheckSpec(
    name="int_range",
    reference=_int_range,
    golden=[Case((8, False), label="uint8"), Case((8, True), label="int8"), Case((4, True), label="int4"),
            Case((1, True), label="1-bit signed"), Case((16, False), label="uint16"), Case((3, True), label="int3"),
            Case((2, False), label="uint2"), Case((12, True), label="int12"), Case((16, True), label="int16")],
    random_case=lambda rng: Case((int(rng.integers(1, 17)), bool(rng.integers(0, 2)))),
    mistakes=[
        Mistake("qmax = 2**bits instead of 2**bits - 1", lambda b, s: (-(2 ** (b - 1)), 2 ** (b - 1)) if s else (0, 2**b),
                "b bits count from 0, so the largest unsigned code is 2**b - 1 (255 for 8 bits)."),
        Mistake("the unsigned range used for signed codes", lambda b, s: (0, 2**b - 1),
                "signed codes give half the codes to negative numbers: -2**(b-1) .. 2**(b-1) - 1."),
        Mistake("the signed range used for unsigned codes", lambda b, s: (-(2 ** (b - 1)), 2 ** (b - 1) - 1),
                "unsigned codes start at 0: 0 .. 2**b - 1."),
        Mistake("a symmetric signed range (-127..127)", lambda b, s: (-(2 ** (b - 1)) + 1, 2 ** (b - 1) - 1) if s else (0, 2**b - 1),
                "two's complement has one more negative code: int8 is -128..127."),
        Mistake("2**bits instead of 2**(bits - 1) for signed codes", lambda b, s: (-(2**b), 2**b - 1) if s else (0, 2**b - 1),
                "one of the b bits is the sign; the magnitude has b - 1 bits."),
    ],
    hints=("unsigned: 0 .. 2**bits - 1", "signed (two's complement): -2**(bits-1) .. 2**(bits-1) - 1"),
    describe=lambda f: _describe_int_range(f),
)


def _pair_notes(expected, actual, names=("qmin", "qmax")) -> list[str]:
    """Which of two numbers is off, and by how much."""
    if not (isinstance(actual, (tuple, list)) and len(actual) == 2
            and all(isinstance(a, (int, float, np.integer, np.floating)) for a in actual)):
        return []
    (e0, e1), (a0, a1) = expected, actual
    if (a0, a1) == (e1, e0) and e0 != e1:
        return [f"your two numbers are swapped: return ({names[0]}, {names[1]})"]
    notes = []
    for e, a, n in ((e0, a0, names[0]), (e1, a1, names[1])):
        if a != e:
            notes.append(f"{n} off by {a - e:+g} (yours {a!r}, expected {e!r})")
    if len(notes) == 1:
        notes[0] = f"{names[0] if a0 == e0 else names[1]} right, " + notes[0]
    return notes


def _describe_int_range(f: Failure) -> list[str]:
    bits, signed = f.case.args
    notes = _pair_notes(f.expected, f.actual)
    other = Case((bits, not signed))
    if f.right_on(other):
        notes.append(f"your {'unsigned' if signed else 'signed'} range for {bits} bits is right: only the "
                     f"{'signed' if signed else 'unsigned'} branch is wrong")
    if bits != 8 and all(f.right_on(Case((8, s))) for s in (True, False)):
        notes.append(f"right for 8 bits, wrong for {bits} bits: compute the range from bits, not fixed numbers")
    wrong_bits = [b for b in range(1, 17) if not f.right_on(Case((b, signed)))]
    if wrong_bits and len(wrong_bits) < 16:
        if all(b % 2 == 0 for b in wrong_bits):
            notes.append("wrong only for even bits: look at the sign of (-2) ** (bits - 1); write -(2 ** (bits - 1))")
        elif all(b % 2 == 1 for b in wrong_bits):
            notes.append("wrong only for odd bits: look at the sign of (-2) ** (bits - 1); write -(2 ** (bits - 1))")
    return notes


def check_int_range(fn):
    """Check ``fn(bits, signed) -> (qmin, qmax)`` for b-bit integer codes."""
    return run_check(INT_RANGE, fn)


# --- value of sign / exponent / mantissa fields ----------------------------------------------------

def _exmy_value(sign, exponent, mantissa, exp_bits, man_bits):
    pattern = (sign << (exp_bits + man_bits)) | (exponent << man_bits) | mantissa
    return decode(pattern, FloatFormat(exp_bits, man_bits, "none")).item()


def _value_with(sign, exponent, mantissa, exp_bits, man_bits, *, bias=None, lead=1, sub_exp=1, sub_lead=0):
    """The formula with one ingredient swapped, to build the classic mistakes."""
    bias = 2 ** (exp_bits - 1) - 1 if bias is None else bias
    frac = mantissa / 2**man_bits
    if exponent == 0:
        value = 2.0 ** (sub_exp - bias) * (sub_lead + frac)
    else:
        value = 2.0 ** (exponent - bias) * (lead + frac)
    return -value if sign else value


def _exmy_case(rng: np.random.Generator) -> Case:
    E, M = int(rng.integers(2, 6)), int(rng.integers(1, 6))
    exponent = 0 if rng.random() < 0.25 else int(rng.integers(1, 2**E))
    return Case((int(rng.integers(0, 2)), exponent, int(rng.integers(0, 2**M)), E, M))


EXMY_VALUE = CheckSpec(
    name="exmy_value",
    rtol=1e-7,  # float32 arithmetic is fine
    reference=_exmy_value,
    golden=[Case((0, 15, 0, 5, 10), label="fp16 1.0"), Case((0, 15, 512, 5, 10), label="fp16 1.5"),
            Case((1, 16, 256, 5, 10), label="fp16 -2.5"), Case((0, 15, 6, 4, 3), label="e4m3 448"),
            Case((0, 3, 1, 2, 1), label="e2m1 6.0"), Case((0, 0, 1, 5, 10), label="fp16 smallest subnormal"),
            Case((0, 0, 0, 2, 1), label="zero"), Case((1, 0, 3, 4, 3), label="e4m3 negative subnormal")],
    random_case=_exmy_case,
    mistakes=[  # on a subnormal, an off-by-one bias looks like 2**(-bias): keep that mistake last
        Mistake("forgot the implicit leading 1 of normal numbers", lambda s, e, m, E, M: _value_with(s, e, m, E, M, lead=0),
                "a normal number is 2**(e - bias) * (1 + m / 2**M): the 1 is not stored but always there."),
        Mistake("ignored the sign bit", lambda s, e, m, E, M: abs(_value_with(0, e, m, E, M)),
                "multiply by (-1)**sign."),
        Mistake("treated subnormals (exponent field 0) like normal numbers",
                lambda s, e, m, E, M: _value_with(s, e, m, E, M, sub_exp=0, sub_lead=1),
                "exponent field 0 means subnormal: 2**(1 - bias) * (0 + m / 2**M)."),
        Mistake("used 2**(-bias) instead of 2**(1 - bias) for subnormals",
                lambda s, e, m, E, M: _value_with(s, e, m, E, M, sub_exp=0),
                "subnormals share the exponent of the smallest normal number, 1 - bias, so the two ranges join up."),
        Mistake("off-by-one bias (2**(E-1) instead of 2**(E-1) - 1)",
                lambda s, e, m, E, M: _value_with(s, e, m, E, M, bias=2 ** (E - 1)),
                "bias = 2**(exp_bits - 1) - 1: 15 for fp16, 7 for e4m3, 1 for e2m1."),
    ],
    hints=("normal (exponent > 0): (-1)**s * 2**(exponent - bias) * (1 + mantissa / 2**man_bits)",
           "subnormal (exponent == 0): (-1)**s * 2**(1 - bias) * (mantissa / 2**man_bits)"),
    describe=lambda f: _describe_scalar(f, _exmy_features),
    probes=[Case((1, 3, 1, 3, 2), label="e3m2 -2.5"), Case((0, 0, 3, 3, 2), label="e3m2 subnormal 0.1875"),
            Case((1, 0, 2, 4, 3), label="e4m3 subnormal -2**-8")],
)


def _exmy_features(case: Case) -> dict:
    sign, exponent, mantissa, E, M = case.args
    return {"sign = 1": sign == 1, "sign = 0": sign == 0,
            "the exponent field is 0 (a subnormal)": exponent == 0,
            "the exponent field is > 0 (a normal number)": exponent > 0,
            "the mantissa field is > 0": mantissa > 0}


def _ratio_note(expected, actual) -> str | None:
    try:
        e, a = float(expected), float(actual)
    except (TypeError, ValueError):
        return None
    if e == 0 or a == 0 or not np.isfinite(a):
        return None
    r = a / e
    if r == -1:
        return "right magnitude, wrong sign"
    k = np.log2(abs(r))
    if k == round(k):
        return f"off by a factor {'-' if r < 0 else ''}2**{int(k)} (yours / expected): an exponent or the bias is off by {abs(int(k))}"
    return None


def _describe_scalar(f: Failure, features) -> list[str]:
    """Scalar results: a ratio note, then which kinds of input are wrong, pooled over many cases."""
    notes = [n for n in [_ratio_note(f.expected, f.actual)] if n]

    def per_case(case, expected, actual):
        return torch.tensor([not f.same(expected, actual)]), {k: torch.tensor([bool(v)]) for k, v in features(case).items()}

    wrong, feats = f.pooled(per_case, n_cases=40)
    where = localize(wrong, feats) if wrong is not None else None
    if where and where != "at every position":
        notes.append("wrong " + where.replace("position", "case"))
    return notes


def check_exmy_value(fn):
    """Check ``fn(sign, exponent, mantissa, exp_bits, man_bits) -> float`` (every pattern a number)."""
    return run_check(EXMY_VALUE, fn)


# --- largest finite value -----------------------------------------------------------------------------

def _float_max(exp_bits, man_bits, special):
    return FloatFormat(exp_bits, man_bits, special).max


def _max_with(E, M, top_exp, top_man, lead=1):
    bias = 2 ** (E - 1) - 1
    return 2.0 ** (top_exp - bias) * (lead + top_man / 2**M)


FLOAT_MAX = CheckSpec(
    name="float_max",
    rtol=1e-7,  # float32 arithmetic is fine
    reference=_float_max,
    golden=[Case((5, 10, "ieee"), label="fp16"), Case((4, 3, "fn"), label="e4m3fn"), Case((2, 1, "none"), label="e2m1"),
            Case((5, 2, "ieee"), label="e5m2"), Case((3, 2, "none"), label="e3m2")],
    random_case=lambda rng: Case((int(rng.integers(2, 8)), int(rng.integers(1, 8)), str(rng.choice(["ieee", "fn", "none"])))),
    mistakes=[
        Mistake("used the all-ones exponent, which 'ieee' reserves for inf/NaN",
                lambda E, M, sp: _max_with(E, M, 2**E - 1, 2**M - 1 - (sp == "fn")),
                "in 'ieee' formats the top exponent field is inf/NaN: the largest finite exponent field is 2**E - 2."),
        Mistake("forgot that 'fn' keeps the top exponent but loses its all-ones mantissa to NaN",
                lambda E, M, sp: _max_with(E, M, 2**E - 1 - (sp == "ieee"), 2**M - 1),
                "e4m3fn: 0 1111 111 is NaN, so the max is 0 1111 110 = 448."),
        Mistake("treated 'fn' like 'ieee'", lambda E, M, sp: _max_with(E, M, 2**E - 1 - (sp != "none"), 2**M - 1),
                "'fn' formats have no inf: their top exponent field still holds numbers."),
        Mistake("forgot the implicit leading 1", lambda E, M, sp: _max_with(
            E, M, 2**E - 1 - (sp == "ieee"), 2**M - 1 - (sp == "fn"), lead=0),
                "max = 2**(top exponent - bias) * (1 + top mantissa / 2**M)."),
    ],
    hints=("find the largest exponent field and mantissa field that still mean a number, then apply the formula.",),
    describe=lambda f: _describe_scalar(f, lambda c: {f"special = {sp!r}": c.args[2] == sp for sp in ("ieee", "fn", "none")}),
    probes=[Case((5, 2, "fn"), label="e5m2 fn"), Case((3, 3, "fn"), label="e3m3 fn"), Case((4, 2, "ieee"), label="e4m2 ieee"),
            Case((3, 1, "none"), label="e3m1")],
)


def check_float_max(fn):
    """Check ``fn(exp_bits, man_bits, special) -> float``: the largest finite value."""
    return run_check(FLOAT_MAX, fn)


# --- round to nearest, ties to even ------------------------------------------------------------------

def _round_to_exmy(x, exp_bits, man_bits):
    return cast(x, FloatFormat(exp_bits, man_bits, "none"))


def _round_with(x, E, M, rounding, exp_shift=0, fixed_step=False):
    e = torch.floor(torch.log2(x.abs().double())) + exp_shift
    step = 2.0 ** -M if fixed_step else torch.exp2(e - M)
    return (rounding(x.double() / step) * step).float()


def _half_away(v):
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def _round_case(rng: np.random.Generator) -> Case:
    E, M = int(rng.integers(2, 6)), int(rng.integers(1, 6))
    fmt = FloatFormat(E, M, "none")
    e = rng.integers(fmt.min_exp, fmt.max_exp, size=12)  # stay inside the normal range
    ticks = rng.integers(0, 2 ** (M + 1), size=12)  # half-steps: even = grid point, odd = tie
    x = 2.0**e * (1 + ticks / 2 ** (M + 1) + rng.choice([0.0, 0.25, -0.25, 0.1], size=12) / 2**M)
    x = x * rng.choice([-1.0, 1.0], size=12)
    return Case((torch.tensor(x, dtype=torch.float32), E, M))


ROUND_TO_EXMY = CheckSpec(
    name="round_to_exmy",
    reference=_round_to_exmy,
    golden=[Case((torch.tensor([1.0, 1.5, -0.25, 8.0]), 4, 3), label="already representable"),
            Case((torch.tensor([1.1, -1.1, 3.3, -0.3]), 4, 3), label="round to nearest"),
            Case((torch.tensor([1.0625, 1.1875, -1.0625, 2.125, 2.375]), 4, 3), label="ties go to the even mantissa"),
            Case((torch.tensor([1.9375, 1.97, -3.9]), 4, 3), label="rounding up into the next binade"),
            Case((torch.tensor([1.25, 1.75, 3.0, 5.0, -2.5]), 2, 1), label="e2m1 ties"),
            Case((torch.tensor([-1.1, -3.3, -0.3, -1.0625]), 4, 3), label="negative values only"),
            Case((torch.tensor([[0.7, -6.5], [100.0, 0.02]]), 5, 2), label="e5m2, a 2-D tensor")],
    random_case=_round_case,
    mistakes=[
        Mistake("truncation (rounding toward zero) instead of rounding", lambda x, E, M: _round_with(x, E, M, torch.trunc),
                "round to the *nearest* multiple of the step: torch.round, not int() or torch.trunc."),
        Mistake("floor instead of rounding", lambda x, E, M: _round_with(x, E, M, torch.floor),
                "torch.floor always goes down (also for negative x); use torch.round."),
        Mistake("round half up (away from zero) instead of half to even", lambda x, E, M: _round_with(x, E, M, _half_away),
                "floor(v + 0.5) sends every tie up; torch.round sends a tie to the even neighbour."),
        Mistake("the exponent one too high (torch.frexp's e, or ceil(log2|x|), instead of floor(log2|x|))",
                lambda x, E, M: _round_with(x, E, M, torch.round, exp_shift=1),
                "the binade of x is e = floor(log2|x|), so that 2**e <= |x| < 2**(e+1); frexp writes x = f * 2**e "
                "with 0.5 <= f < 1, one more than that."),
        Mistake("a fixed step 2**-man_bits that does not grow with the exponent",
                lambda x, E, M: _round_with(x, E, M, torch.round, fixed_step=True),
                "the gap between neighbours is 2**(e - man_bits) where 2**e <= |x| < 2**(e+1)."),
    ],
    hints=("e = floor(log2|x|), step = 2**(e - man_bits), x_hat = round(x / step) * step (torch.round: ties to even)",
           "return a float32 tensor shaped like x"),
    describe=lambda f: _describe_round(f),
)


def _round_features(x: torch.Tensor, E: int, M: int) -> dict:
    x64 = x.double()
    e = torch.floor(torch.log2(x64.abs()))
    step = torch.exp2(e - M)
    v = x64 / step
    ref = _round_to_exmy(x, E, M).double()
    return {
        "x is an exact tie between two neighbours": (v - torch.floor(v)) == 0.5,
        "rounding carries x into the next binade (the result is a power of two above x)": ref.abs() >= torch.exp2(e + 1),
        "x < 0": x < 0,
        "x > 0": x > 0,
        "|x| < 1": x.abs() < 1,
        "|x| >= 2": x.abs() >= 2,
    }


def _describe_round(f: Failure) -> list[str]:
    a = f.actual
    notes = []
    if not isinstance(a, torch.Tensor) or a.shape != f.expected.shape:
        return notes
    if bool(torch.isnan(a).any()):
        notes.append("NaN in your result" + (" for negative x: take log2 of |x|, not of x" if bool((f.case.args[0] < 0).any()) else ""))
    x, E, M = f.case.args
    if a.is_floating_point() and bool(torch.isfinite(a).all()):
        on_grid = _round_to_exmy(a.float(), E, M) == a.float()
        if not bool(on_grid.all()):
            notes.append(f"{int((~on_grid).sum())} of your results are not values of the format (they need more than "
                         f"{M} mantissa bits): the step in [2**e, 2**(e+1)) is 2**(e - man_bits)")

    def per_case(case, expected, mine):
        if not isinstance(mine, torch.Tensor) or mine.shape != expected.shape or not mine.is_floating_point():
            return None
        return ~_close(expected, mine.detach().float()), _round_features(*case.args)

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None else None
    if where:
        tip = {"exact tie": ": a tie goes to the even neighbour, as torch.round does",
               "x < 0": ": check what your rounding and log2 do for negative x",
               "next binade": ": the step must come from |x|'s own binade, e = floor(log2|x|)"}
        notes.append("wrong " + where + next((t for k, t in tip.items() if k in where), ""))
    return notes


def check_round_to_exmy(fn):
    """Check ``fn(x, exp_bits, man_bits) -> tensor``: normal numbers rounded to ExMy, ties to even."""
    return run_check(ROUND_TO_EXMY, fn)
