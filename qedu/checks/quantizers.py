"""Checks for the exercises of lesson 02 (uniform quantization).

Codes are signed ``bits``-bit integers (``qmin = -2**(bits-1)``, ``qmax = 2**(bits-1) - 1``).

* :func:`check_qparams`: ``fn(x, bits, symmetric) -> (scale: float, zero_point: int)``
* :func:`check_quantize`: ``fn(x, scale, zero_point, bits) -> integer tensor``
* :func:`check_dequantize`: ``fn(q, scale, zero_point) -> float tensor``
* :func:`check_per_channel`: ``fn(w, bits) -> w_hat``, symmetric fake quantization, one scale per row
* :func:`check_stochastic_round`: ``fn(v, generator) -> float tensor`` of integers (compared by statistics)
* :func:`check_pack4`: ``fn(q) -> uint8 tensor``, two 4-bit codes per byte, first in the low nibble

The references are qedu's own :mod:`qedu.quantizers` and :mod:`qedu.packing`; each check
names the classic mistakes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Mistake, compare, run_check
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


# --- scale and zero point ------------------------------------------------------------------------

def _qparams(x, bits, symmetric):
    scale, zero_point = choose_qparams(x, IntFormat(bits), symmetric=symmetric)
    return float(scale), int(zero_point)


def _same_qparams(expected, actual) -> str | None:
    """(float, int) within float32 rounding; 0-d tensors are accepted and turned into numbers."""
    if isinstance(actual, (tuple, list)):
        actual = tuple(a.item() if isinstance(a, torch.Tensor) and a.numel() == 1 else a for a in actual)
    return compare(expected, actual, rtol=1e-5)


def _qparams_with(x, bits, symmetric, *, qmax=None, widen=True, sym_div=None, zp_sign=-1, eps=FLOAT32_EPS):
    """The formula with one ingredient swapped, to build the classic mistakes."""
    qmin, true_qmax = _range(bits)
    qmax = true_qmax if qmax is None else qmax
    lo, hi = float(x.min()), float(x.max())
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        scale = max(max(-lo, hi) / ((qmax - qmin) / 2 if sym_div is None else sym_div(qmin, qmax)), eps)
        return scale, 0
    scale = max((hi - lo) / (qmax - qmin), eps)
    zero_point = qmin + zp_sign * round(lo / scale)
    return scale, int(min(max(zero_point, qmin), qmax))


QPARAMS = CheckSpec(
    name="qparams",
    reference=_qparams,
    golden=[
        Case((_tensor([-1.0, 0.5, 2.0]), 8, False), label="affine int8"),
        Case((_tensor([-1.0, 0.5, 2.0]), 8, True), label="symmetric int8: max|x| / 127.5"),
        Case((_tensor([0.5, 1.0, 3.0]), 4, False), label="all positive: widen the range to include 0"),
        Case((_tensor([-6.0, -2.0, -0.5]), 4, False), label="all negative"),
        Case((_tensor([0.0, 0.0]), 8, True), label="all zeros: scale may not be 0"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 5), size=int(rng.integers(2, 30))),
                                               dtype=torch.float32), int(rng.integers(2, 9)), bool(rng.integers(0, 2)))),
    mistakes=[
        Mistake("qmax = 2**bits instead of 2**(bits-1) - 1", lambda x, b, s: _qparams_with(x, b, s, qmax=2**b),
                "signed b-bit codes run from -2**(b-1) to 2**(b-1) - 1 (int8: -128..127)."),
        Mistake("the range was not widened to include 0", lambda x, b, s: _qparams_with(x, b, s, widen=False),
                "use min(x.min(), 0) and max(x.max(), 0), so that a real 0 is exactly representable."),
        Mistake("symmetric scale max|x| / qmax instead of max|x| / ((qmax - qmin) / 2)",
                lambda x, b, s: _qparams_with(x, b, s, sym_div=lambda qmin, qmax: qmax),
                "this kit follows torch: int8 divides by 127.5 (the 256 codes span 2 max|x|), not by 127."),
        Mistake("zero point with the wrong sign (qmin + round(min / scale))", lambda x, b, s: _qparams_with(x, b, s, zp_sign=1),
                "the real value min must map to qmin: zero_point = qmin - round(min / scale)."),
        Mistake("no eps floor: an all-zero x gives scale 0", lambda x, b, s: _qparams_with(x, b, s, eps=0.0),
                "take max(scale, 1.1920929e-07) (float32 eps, as torch) so a constant tensor still gets a grid."),
    ],
    hints=("affine: scale = (max - min) / (qmax - qmin), zero_point = qmin - round(min / scale), after widening to 0",
           "symmetric: scale = max(|min|, |max|) / ((qmax - qmin) / 2), zero_point = 0"),
    compare=lambda expected, actual: _same_qparams(expected, actual),
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
        return f"result should be a torch.Tensor of integer codes, got {type(actual).__name__}"
    if actual.is_floating_point() or actual.dtype == torch.bool:
        return f"result has dtype {actual.dtype}; return integer codes, e.g. with .to(torch.int32)"
    return compare(expected.to(torch.int64), actual.to(torch.int64))


QUANTIZE = CheckSpec(
    name="quantize",
    reference=_quantize,
    golden=[
        Case((_tensor([-1.0, -0.26, 0.0, 0.24, 1.0]), 0.1, 0, 8), label="zero point 0"),
        Case((_tensor([-1.0, 0.0, 1.0]), 0.05, -20, 8), label="zero point -20"),
        Case((_tensor([100.0, -100.0, 3.0, 0.2]), 0.1, 5, 4), label="clamping to int4 with zero point 5"),
        Case((_tensor([0.25, 0.75, -0.25, 1.25]), 0.5, 0, 8), label="ties go to the even code"),
        Case((_tensor([-12.15]), 0.1, 0, 8), label="x * (1/scale), not x / scale: -12.15 / 0.1"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.normal(0, 3, size=int(rng.integers(1, 40))), dtype=torch.float32),
                                  float(np.float32(rng.uniform(0.01, 0.5))), int(rng.integers(-8, 8)), int(rng.integers(4, 9)))),
    mistakes=[
        Mistake("qmax = 2**bits instead of 2**(bits-1) - 1",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)) + z, _range(b)[0], 2**b)),
                "signed b-bit codes end at 2**(b-1) - 1 (int4: 7)."),
        Mistake("the unsigned range 0 .. 2**bits - 1 for signed codes",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)) + z, 0, 2**b - 1)),
                "signed codes start at qmin = -2**(bits-1)."),
        Mistake("forgot the zero point", lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)), *_range(b))),
                "add zero_point after rounding: q = round(x / scale) + zero_point, then clamp."),
        Mistake("clamped before adding the zero point",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(_v(x, s)), *_range(b)) + z),
                "clamp last: the codes (after + zero_point) must lie in [qmin, qmax]."),
        Mistake("clamped x itself to [qmin, qmax] (the wrong space) instead of the codes",
                lambda x, s, z, b: _codes(torch.round(_v(torch.clamp(x, *_range(b)), s)) + z),
                "qmin and qmax are codes, not real values: clamp round(x / scale) + zero_point."),
        Mistake("divided x / scale instead of multiplying by 1 / scale",
                lambda x, s, z, b: _codes(torch.clamp(torch.round(x / s) + z, *_range(b))),
                "torch computes inv = 1 / scale once and x * inv; in float32 the two differ at near ties "
                "(-12.15 / 0.1 = -121.49999 rounds to -121, -12.15 * (1 / 0.1) = -121.5 rounds to -122)."),
        Mistake("truncated toward zero (.int() / int()) instead of rounding",
                lambda x, s, z, b: _codes(torch.clamp(torch.trunc(_v(x, s)) + z, *_range(b))),
                "converting to int cuts the fraction off; round first with torch.round."),
        Mistake("rounded ties up (floor(v + 0.5)) instead of to even",
                lambda x, s, z, b: _codes(torch.clamp(torch.floor(_v(x, s) + 0.5) + z, *_range(b))),
                "torch.round sends 0.5 to 0 and 1.5 to 2 (ties to even), as torch's quantizers do."),
    ],
    hints=("q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax) with torch.round (ties to even)",),
    compare=_same_codes,
)


def check_quantize(fn):
    """Check ``fn(x, scale, zero_point, bits) -> codes`` for signed ``bits``-bit codes."""
    return run_check(QUANTIZE, fn)


# --- dequantize -----------------------------------------------------------------------------------

def _same_floats(expected, actual, rtol: float = 1e-6) -> str | None:
    if isinstance(actual, torch.Tensor) and actual.is_floating_point():
        actual = actual.to(torch.float32)
    return compare(expected, actual, atol=1e-12, rtol=rtol)


DEQUANTIZE = CheckSpec(
    name="dequantize",
    reference=lambda q, scale, zero_point: dequantize(q, scale, zero_point),
    golden=[
        Case((torch.tensor([-122, 0, 127]), 0.1, 0), label="zero point 0"),
        Case((torch.tensor([-40, -20, 0, 3]), 0.05, -20), label="zero point -20"),
        Case((torch.tensor([0, 7, -8]), 0.5, 3), label="int4 codes"),
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
    hints=("x_hat = (q - zero_point) * scale, as a float tensor",),
    compare=_same_floats,
)


def check_dequantize(fn):
    """Check ``fn(q, scale, zero_point) -> x_hat`` (a float tensor)."""
    return run_check(DEQUANTIZE, fn)


# --- per-channel ----------------------------------------------------------------------------------

def _per_channel(w, bits):
    fmt = IntFormat(bits)
    return fake_quantize(w, *choose_qparams(w, fmt, PerChannel(0)), fmt)


def _per_channel_with(w, bits, max_abs):
    qmin, qmax = _range(bits)
    scale = torch.clamp(max_abs / ((qmax - qmin) / 2), min=FLOAT32_EPS)
    inv = 1.0 / scale
    return torch.clamp(torch.round(w * inv), qmin, qmax) * scale


PER_CHANNEL = CheckSpec(
    name="per_channel",
    reference=_per_channel,
    golden=[
        Case((_tensor([[0.1, 5.0, -0.2], [0.3, -4.0, 0.05], [0.2, 1.0, 0.0]]), 4), label="a square weight"),
        Case((_tensor([[1.0, -0.5, 0.2], [10.0, 2.0, -3.0]]), 4), label="two rows of very different size"),
        Case((_tensor([[0.0, 0.0], [1.0, -1.0]]), 8), label="an all-zero row"),
    ],
    random_case=lambda rng: Case((torch.tensor(rng.normal(0, 1, size=(int(rng.integers(1, 7)), int(rng.integers(1, 9))))
                                               * rng.uniform(0.1, 10, size=(1, 1)), dtype=torch.float32), int(rng.integers(2, 9)))),
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
    ],
    hints=("scale = w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), zero_point = 0",
           "w_hat = clamp(round(w * (1 / scale)), qmin, qmax) * scale"),
    compare=_same_floats,
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


class _FreshCases:
    """Golden cases built anew for every check run, so each run gets a freshly seeded generator."""

    def __init__(self, make):
        self._make = make

    def __iter__(self):
        return iter(self._make())

    def __len__(self):
        return len(self._make())


def _rows(values, n: int = 4000) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, n).contiguous()  # (rows,) -> (rows, n)


def _golden_stochastic():
    return [
        Case((_rows([2.3, -1.7, 0.5, 4.0, -0.25]), torch.Generator().manual_seed(0)), label="five values, 4000 times each"),
        Case((_rows([0.9, 0.1, -3.5]), torch.Generator().manual_seed(1)), label="fractions near 0 and 1"),
    ]


STOCHASTIC_ROUND = CheckSpec(
    name="stochastic_round",
    reference=_stochastic_round,
    golden=_FreshCases(_golden_stochastic),
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
)


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
)


def check_pack4(fn):
    """Check ``fn(q) -> uint8 tensor``: two 4-bit codes per byte, first code in the low nibble."""
    return run_check(PACK4, fn)
