"""Floating-point formats as values: fp32, fp16, bf16, fp8, fp6, fp4 and any ExMy you invent.

A float format with E exponent bits and M mantissa bits stores a number in 1 + E + M bits::

    s | e (E bits) | m (M bits)            bias = 2**(E-1) - 1
    normal,    0 < e:   value = (-1)**s * 2**(e - bias) * (1 + m / 2**M)
    subnormal, e == 0:  value = (-1)**s * 2**(1 - bias) * (m / 2**M)   (fills the gap down to 0)

What the all-ones exponent means is the format's *special-value convention*:

    "ieee"  reserved: m == 0 is +-inf, m != 0 is NaN           fp32, fp16, bf16, fp8 e5m2
    "fn"    finite + one NaN: only s.11..1.11..1 is NaN          fp8 e4m3fn (so its max is 448)
    "none"  every pattern is a number: no inf, no NaN            fp6 e3m2 / e2m3, fp4 e2m1

Every format here is a subset of float32, so :func:`cast` returns float32 tensors whose
values are exactly representable in the format.

>>> FP16.max, FP8_E4M3.max, FP4_E2M1.max
(65504.0, 448.0, 6.0)
>>> cast(torch.tensor([0.1, 1000.0]), FP8_E4M3).tolist()
[0.1015625, 448.0]
>>> str(fields(1.0, FP16))
'0 01111 0000000000'
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from qedu._validation import as_float_tensor, check_fits_format, check_int, check_real

__all__ = ["FloatFormat", "FP32", "FP16", "BF16", "FP8_E4M3", "FP8_E5M2", "FP6_E3M2", "FP6_E2M3",
           "FP4_E2M1", "cast", "default_saturate", "grid", "encode", "decode", "fields", "Fields", "format_table",
           "repeated_add"]

SPECIALS = ("ieee", "fn", "none")


@dataclass(frozen=True)
class FloatFormat:
    """A sign/exponent/mantissa floating-point format ("ExMy").

    Args:
        exp_bits: E, exponent bits, 1..8.
        man_bits: M, mantissa (fraction) bits, 1..23. (With M = 0 "ties to even" has no
            mantissa bit to make even, so IEEE 754 leaves it undefined; qedu asks for M >= 1.)
        special: "ieee", "fn" or "none" (see the module docstring).
        bias: exponent bias; default ``2**(E-1) - 1``. Every value must fit in a float32.

    Raises:
        TypeError / ValueError: for bits that are not ints in range, an unknown ``special``,
            or a combination that cannot hold numbers ("ieee" with E < 2).
    """

    exp_bits: int
    man_bits: int
    special: str = "ieee"
    bias: int | None = None

    def __post_init__(self):
        E = check_int(self.exp_bits, "exp_bits", 1, 8)
        M = check_int(self.man_bits, "man_bits", 1, 23)
        if self.special not in SPECIALS:
            raise ValueError(f"special must be one of {SPECIALS}, got {self.special!r}; "
                             "use 'ieee' (inf + NaN), 'fn' (one NaN, no inf) or 'none' (neither).")
        if self.special == "ieee" and E < 2:
            raise ValueError("special='ieee' needs exp_bits >= 2 (its all-ones exponent is reserved for inf/NaN, "
                             f"so exp_bits={E} would leave no normal numbers); use special='none' or 'fn'.")
        bias = 2 ** (E - 1) - 1 if self.bias is None else check_int(self.bias, "bias")
        object.__setattr__(self, "bias", bias)
        if self.max_exp > 127 or self.min_exp - M < -149:
            raise ValueError(f"bias={bias} puts the values of e{E}m{M} outside float32 (exponents "
                             f"{self.min_exp - M}..{self.max_exp}, float32 holds -149..127); "
                             f"choose a bias in {self._top_field()[0] - 127}..{150 - M} or leave it out.")

    # --- layout -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total bits: 1 (sign) + exp_bits + man_bits."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special != "none"

    @property
    def min_exp(self) -> int:
        """Exponent of the smallest normal number, ``1 - bias`` (subnormals share it)."""
        return 1 - self.bias

    @property
    def max_exp(self) -> int:
        """Exponent of the largest finite binade."""
        return self._top_field()[0] - self.bias

    def _top_field(self) -> tuple[int, int]:
        """(exponent field, mantissa field) of the largest finite value."""
        E, M = self.exp_bits, self.man_bits
        if self.special == "ieee":  # the all-ones exponent is inf/NaN
            return 2**E - 2, 2**M - 1
        if self.special == "fn":  # only the all-ones pattern is NaN
            return 2**E - 1, 2**M - 2
        return 2**E - 1, 2**M - 1

    # --- the numbers a reader asks for first --------------------------------------------
    @property
    def max(self) -> float:
        """Largest finite value, e.g. 65504 for fp16, 448 for e4m3fn, 6 for e2m1."""
        e, m = self._top_field()
        return math.ldexp(1 + m / 2**self.man_bits, e - self.bias)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**(1 - bias)`` (``torch.finfo(dtype).tiny``)."""
        return math.ldexp(1.0, self.min_exp)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, the subnormal ``2**(1 - bias - M)``."""
        return math.ldexp(1.0, self.min_exp - self.man_bits)

    @property
    def eps(self) -> float:
        """Spacing between 1 and the next value, ``2**-M`` (``torch.finfo(dtype).eps``)."""
        return math.ldexp(1.0, -self.man_bits)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype with exactly this format, or None (torch has no fp6/fp4 casts)."""
        return _TORCH_DTYPES.get(self)

    @property
    def name(self) -> str:
        if self in _NAMES:
            return _NAMES[self]
        suffix = "" if self.bias == 2 ** (self.exp_bits - 1) - 1 else f"_bias{self.bias}"
        return f"fp{self.bits}_e{self.exp_bits}m{self.man_bits}_{self.special}{suffix}"

    def __str__(self) -> str:
        return self.name


FP32 = FloatFormat(8, 23)
FP16 = FloatFormat(5, 10)
BF16 = FloatFormat(8, 7)
FP8_E4M3 = FloatFormat(4, 3, "fn")
FP8_E5M2 = FloatFormat(5, 2)
FP6_E3M2 = FloatFormat(3, 2, "none")
FP6_E2M3 = FloatFormat(2, 3, "none")
FP4_E2M1 = FloatFormat(2, 1, "none")

_NAMES = {FP32: "fp32", FP16: "fp16", BF16: "bf16", FP8_E4M3: "fp8_e4m3fn", FP8_E5M2: "fp8_e5m2",
          FP6_E3M2: "fp6_e3m2", FP6_E2M3: "fp6_e2m3", FP4_E2M1: "fp4_e2m1"}
_TORCH_DTYPES = {FP32: torch.float32, FP16: torch.float16, BF16: torch.bfloat16,
                 FP8_E4M3: torch.float8_e4m3fn, FP8_E5M2: torch.float8_e5m2}


def _check_format(fmt) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat such as qedu.formats.FP16, got {type(fmt).__name__} {fmt!r}.")
    return fmt


@functools.cache
def _torch_e4m3fn_saturates() -> bool:
    """Does this torch clamp e4m3fn overflow to +-448 (2.13) or turn it into NaN (2.11)?"""
    return not bool(torch.tensor([1e4]).to(torch.float8_e4m3fn).float().isnan())


def default_saturate(fmt: FloatFormat) -> bool:
    """What :func:`cast` does on overflow when ``saturate=None``: follow torch.

    "ieee" formats overflow to inf (False); "none" formats have neither inf nor NaN, so they
    saturate (True); "fn" formats do what this torch does for ``float8_e4m3fn`` (checked at
    run time: torch 2.13 saturates, 2.11 gives NaN).

    >>> default_saturate(FP16), default_saturate(FP4_E2M1)
    (False, True)
    """
    special = _check_format(fmt).special
    if special == "fn":
        return _torch_e4m3fn_saturates()
    return special == "none"


def cast(x, fmt: FloatFormat, saturate: bool | None = None) -> torch.Tensor:
    """Round every element of ``x`` to the nearest value of ``fmt`` (ties to even).

    For a magnitude ``a`` in the binade ``2**e <= a < 2**(e+1)`` the neighbours in the format
    are ``step = 2**(e - M)`` apart, so ``cast = round_half_even(a / step) * step``; below
    the smallest normal number the step stays ``2**(1 - bias - M)`` (subnormals). The sign is
    kept, also on zero (-1e-9 becomes -0.0). For FP16, BF16, FP8_E4M3 and FP8_E5M2 the result
    equals ``x.to(fmt.torch_dtype).float()`` bit for bit (NaNs aside, which stay NaN).

    Args:
        x: tensor, numpy array, list or number; float64 is rounded to float32 first, as torch does.
        fmt: the target :class:`FloatFormat`.
        saturate: what a value beyond ``fmt.max`` becomes. True: +-max (also +-inf when the
            format has no inf). False: +-inf, or NaN when the format has no inf. None:
            :func:`default_saturate`. A magnitude overflows when it rounds above max, so
            fp16 overflows from 65520 (halfway to the next power of 2) and e4m3fn above 464.

    Returns:
        A float32 tensor shaped like ``x`` holding values of ``fmt`` (or +-inf / NaN).

    >>> cast(torch.tensor([1.0, 1.1, 70000.0]), FP16).tolist()
    [1.0, 1.099609375, inf]
    """
    fmt = _check_format(fmt)
    if saturate is None:
        saturate = default_saturate(fmt)
    elif not isinstance(saturate, bool):
        raise TypeError(f"saturate must be True, False or None, got {saturate!r}.")
    x = as_float_tensor(x, "x", allow_empty=True, allow_nonfinite=True).float()
    a = x.double().abs()  # magnitudes; float64 makes every step below exact
    finite = torch.isfinite(a)
    a_fin = torch.where(finite, a, 0.0)
    # 1. the binade: a = f * 2**e with 1 <= f < 2; subnormals use the smallest normal exponent
    e = (torch.frexp(a_fin).exponent - 1).clamp(min=fmt.min_exp)
    # 2. the distance between neighbours in that binade
    step = torch.exp2((e - fmt.man_bits).double())
    # 3. round to a whole number of steps; torch.round sends ties to the even number
    y = torch.round(a_fin / step) * step
    y = torch.where(finite, y, a)  # inf and NaN pass through step 3 unchanged
    # 4. overflow: anything that rounded above max
    over = y > fmt.max
    if saturate:
        y = torch.where(over & (finite | (not fmt.has_inf)), fmt.max, y)
    else:
        y = torch.where(over, math.inf if fmt.has_inf else math.nan, y)
    return torch.copysign(y, x.double()).float()


def grid(fmt: FloatFormat) -> torch.Tensor:
    """Every finite value of ``fmt``, sorted, as a float32 tensor (zero appears once, as +0.0).

    Read as unsigned integers, the patterns with sign bit 0 are already sorted by value, so
    the grid is the decoded patterns 0, 1, 2, ... (finite ones) mirrored to the negative side.

    Raises:
        ValueError: for formats of more than 16 bits (fp32 would have ~4e9 values).

    >>> grid(FP4_E2M1).tolist()
    [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    fmt = _check_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"grid({fmt.name}) would list about 2**{fmt.bits} values; grid() accepts formats of "
                         "at most 16 bits. Use fmt.max, fmt.min_normal and cast() to study larger ones.")
    positive = decode(torch.arange(2 ** (fmt.bits - 1)), fmt)  # +0, then every positive pattern
    positive = positive[torch.isfinite(positive)]
    return torch.cat([-positive[1:].flip(0), positive])


def encode(x, fmt: FloatFormat, saturate: bool | None = None) -> torch.Tensor:
    """Bit patterns (int64, in ``0 .. 2**bits - 1``) of ``cast(x, fmt, saturate)``.

    ``pattern = s << (E + M) | e << M | m`` with the fields of the formula in the module
    docstring. Equals torch's ``x.to(dtype).view(uint8)`` for fp8 and ``view(int16) & 0xFFFF``
    for fp16/bf16, except for NaN: qedu writes the sign of x, an all-ones exponent and the
    mantissa ``10..0`` ("ieee", the quiet NaN numpy and torch use for fp32/fp16) or ``11..1``
    ("fn"). torch's bf16 kernel writes 0xFFFF and its e5m2 kernel 0x7F/0xFF instead.

    Raises:
        ValueError: NaN in a format without NaN (fp6/fp4; also from ``saturate=False``).

    >>> encode(torch.tensor([1.0, -2.0]), FP8_E4M3).tolist()
    [56, 192]
    """
    fmt = _check_format(fmt)
    E, M = fmt.exp_bits, fmt.man_bits
    y = cast(x, fmt, saturate).double()
    nan = torch.isnan(y)
    if not fmt.has_nan and bool(nan.any()):
        raise ValueError(f"{fmt.name} has no NaN pattern, and {int(nan.sum())} value(s) of cast(x) are NaN "
                         "(NaN input, or overflow with saturate=False); clean x or use saturate=True.")
    sign = torch.signbit(y).long()
    a = torch.where(torch.isfinite(y), y.abs(), 0.0)
    e = (torch.frexp(a).exponent - 1).clamp(min=fmt.min_exp)  # the binade, as in cast()
    normal = a >= fmt.min_normal
    exp_field = torch.where(normal, e + fmt.bias, 0).long()
    man_field = ((a / torch.exp2(e.double()) - normal.double()) * 2**M).long()  # exact integers
    top = 2**E - 1
    exp_field = torch.where(torch.isinf(y) | nan, top, exp_field)
    man_field = torch.where(torch.isinf(y), 0, man_field)
    man_field = torch.where(nan, 2 ** (M - 1) if fmt.has_inf else 2**M - 1, man_field)
    return sign << (E + M) | exp_field << M | man_field


def _as_bits(bits, fmt: FloatFormat) -> torch.Tensor:
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        bits = torch.tensor(int(bits))
    elif isinstance(bits, (list, tuple, np.ndarray)):
        bits = torch.as_tensor(np.asarray(bits))
    if not isinstance(bits, torch.Tensor) or bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
        raise TypeError(f"bits must be integer bit patterns (an int, or an integer tensor/array), got "
                        f"{type(bits).__name__} {getattr(bits, 'dtype', '')}; to read the fields of a value use "
                        f"encode(x, fmt) or fields(x, fmt).")
    bits = bits.long()
    lo, hi = -(2 ** (fmt.bits - 1)), 2**fmt.bits - 1
    if bits.numel() and (int(bits.min()) < lo or int(bits.max()) > hi):
        raise ValueError(f"bits for {fmt.name} must lie in {lo}..{hi} (negative values are read as two's "
                         f"complement, as a signed view shows them), got values {int(bits.min())}..{int(bits.max())}.")
    return bits & (2**fmt.bits - 1)


def decode(bits, fmt: FloatFormat) -> torch.Tensor:
    """The float32 values of bit patterns of ``fmt`` (the inverse of :func:`encode`).

    Applies the formula of the module docstring field by field. Negative inputs are read as
    two's complement, so ``decode(t.view(torch.int16), FP16)`` works.

    >>> decode(torch.tensor([0x3C00, 0x0001, 0x7C00]), FP16).tolist()
    [1.0, 5.960464477539063e-08, inf]
    """
    fmt = _check_format(fmt)
    E, M = fmt.exp_bits, fmt.man_bits
    bits = _as_bits(bits, fmt)
    sign = (bits >> (E + M)) & 1
    exp_field = (bits >> M) & (2**E - 1)
    man_field = bits & (2**M - 1)
    normal = exp_field > 0
    significand = man_field.double() / 2**M + normal.double()  # 1.m (normal) or 0.m (subnormal)
    exponent = torch.where(normal, exp_field - fmt.bias, fmt.min_exp)
    value = significand * torch.exp2(exponent.double())
    top = exp_field == 2**E - 1
    if fmt.special == "ieee":
        value = torch.where(top, torch.where(man_field == 0, math.inf, math.nan), value)
    elif fmt.special == "fn":
        value = torch.where(top & (man_field == 2**M - 1), math.nan, value)
    return torch.where(sign == 1, -value, value).float()


@dataclass(frozen=True)
class Fields:
    """Sign, exponent and mantissa fields of one value; ``str()`` shows the bits."""

    fmt: FloatFormat
    sign: int
    exponent: int
    mantissa: int
    bits: int
    value: float

    @property
    def kind(self) -> str:
        """"zero", "subnormal", "normal", "inf" or "nan"."""
        if math.isnan(self.value) or math.isinf(self.value):
            return "nan" if math.isnan(self.value) else "inf"
        return "zero" if self.value == 0 else "subnormal" if self.exponent == 0 else "normal"

    def __str__(self) -> str:
        f = self.fmt
        man = format(self.mantissa, f"0{f.man_bits}b") if f.man_bits else ""
        return f"{self.sign} {self.exponent:0{f.exp_bits}b} {man}".rstrip()

    @property
    def formula(self) -> str:
        """The value written out with the format's formula, e.g. '+2^(15-15) * (1 + 0/1024) = 1'."""
        f, s = self.fmt, "-" if self.sign else "+"
        if self.kind in ("inf", "nan"):
            return f"{s}{self.kind} (all-ones exponent)"
        lead, e = (1, f"{self.exponent}-{f.bias}") if self.kind == "normal" else (0, f"1-{f.bias}")
        return f"{s}2^({e}) * ({lead} + {self.mantissa}/{2**f.man_bits}) = {self.value:.8g}"


def fields(x=None, fmt: FloatFormat = FP32, *, bits: int | None = None) -> Fields:
    """The sign/exponent/mantissa fields of one number ``x`` after :func:`cast`, or of a pattern.

    Pass a value (``fields(0.1, FP16)``) or a bit pattern by keyword (``fields(bits=0x3C00,
    fmt=FP16)``); a plain ``fields(1, FP16)`` means the *value* 1.

    >>> print(fields(-1.5, FP16), "|", fields(-1.5, FP16).formula)
    1 01111 1000000000 | -2^(15-15) * (1 + 512/1024) = -1.5
    """
    fmt = _check_format(fmt)
    if (x is None) == (bits is None):
        raise TypeError("fields() needs exactly one of x (a value) or bits=... (a bit pattern), e.g. fields(0.1, FP16).")
    if bits is None:
        t = as_float_tensor(x, "x", allow_nonfinite=True)
        if t.numel() != 1:
            raise ValueError(f"fields() shows one number; x has {t.numel()} elements. Loop over x, or use encode(x, fmt).")
        bits = int(encode(t.reshape(()), fmt))
    else:
        pattern = _as_bits(bits, fmt)
        if pattern.numel() != 1:
            raise ValueError(f"fields() shows one number; bits has {pattern.numel()} elements. Use decode(bits, fmt).")
        bits = int(pattern.reshape(()))
    E, M = fmt.exp_bits, fmt.man_bits
    return Fields(fmt, bits >> (E + M) & 1, bits >> M & (2**E - 1), bits & (2**M - 1), bits,
                  float(decode(bits, fmt)))


def format_table(formats=(FP32, BF16, FP16, FP8_E5M2, FP8_E4M3, FP6_E3M2, FP4_E2M1)) -> str:
    """Range versus precision of several formats, as a text table to print.

    "digits" is ``(M + 1) * log10(2)`` (M stored bits + the implicit 1): about how many
    significant decimal digits survive a cast;
    "eps" is the gap after 1.0; inside each binade the relative gap falls from eps to about eps/2,
    and rounding to nearest errs by at most eps/2 relative (the unit roundoff).

    >>> print(format_table([FP4_E2M1]))  # doctest: +NORMALIZE_WHITESPACE
    format      bits  E   M         max  min normal  min subnormal      eps  digits  inf  NaN
    fp4_e2m1       4  2   1           6           1            0.5      0.5     0.6   no   no
    """
    rows = ["format      bits  E   M         max  min normal  min subnormal      eps  digits  inf  NaN"]
    for f in formats:
        f = _check_format(f)
        yes = {True: "yes", False: "no"}
        rows.append(f"{f.name:<11} {f.bits:>4} {f.exp_bits:>2} {f.man_bits:>3} {f.max:>11.5g} {f.min_normal:>11.4g} "
                    f"{f.min_subnormal:>14.4g} {f.eps:>8.2g} {(f.man_bits + 1) * math.log10(2):>7.1f} "
                    f"{yes[f.has_inf]:>4} {yes[f.has_nan]:>4}")
    return "\n".join(rows)


def repeated_add(start: float, step: float, n: int, fmt: FloatFormat) -> torch.Tensor:
    """Add ``step`` to ``start`` n times, keeping the running sum in ``fmt`` (round after each add).

    ``acc = cast(acc + cast(step, fmt), fmt)``: the sum is formed in float32 and rounded, as
    torch does for fp16/bf16 tensors. Once ``acc + step`` rounds back to ``acc`` (the step is
    below half the gap around acc: it is *swamped*) every later addition is lost too, so the
    loop stops early and repeats that value.

    A sum that grows beyond ``fmt.max`` overflows as the format's own addition does (inf, or
    ``fmt.max`` where :func:`default_saturate` says so); that is the format speaking, not a bug.

    Returns:
        float32 tensor of n + 1 running sums, ``start`` first.

    Raises:
        TypeError / ValueError: ``start`` or ``step`` not a finite number that ``fmt`` can hold
            (NaN would make every sum NaN), ``n`` not an int >= 0, ``fmt`` not a FloatFormat.

    >>> repeated_add(1.0, 1e-3, 10_000, BF16)[-1].item()  # the true sum is 11
    1.0
    """
    fmt = _check_format(fmt)
    n = check_int(n, "n", 0)
    start = check_fits_format(check_real(start, "start", example="1.0"), "start", fmt)
    step = check_fits_format(check_real(step, "step", example="1e-3"), "step", fmt)
    acc, step_ = cast(start, fmt), cast(step, fmt)
    history = [acc]
    for _ in range(n):
        new = cast(acc + step_, fmt)
        if torch.equal(new, acc):  # swamped: nothing will ever change again
            break
        acc = new
        history.append(acc)
    return torch.stack(history + [acc] * (n + 1 - len(history)))
