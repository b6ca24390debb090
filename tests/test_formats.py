"""Tests for qedu/formats.py and qedu/floats.py.

The float casts are proved bit-exact against torch's own casts on a few million float32
inputs per format (random bit patterns, every midpoint between neighbours and 1-2 ulps
around it, the subnormal range, the overflow threshold, +-0, +-inf, NaN). Formats torch
cannot cast (fp6, fp4, custom ExMy) are checked against hand-written grids and a brute-force
nearest-value search.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.formats import (
    BF16, BINARY, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FP16, FP32, INT2, INT4, INT8, UINT2, UINT4,
    UINT8, FloatFormat, IntFormat, cast, decode, default_saturate, encode, fields, format_table, grid, repeated_add,
)

TORCH_FORMATS = [FP16, BF16, FP8_E4M3, FP8_E5M2]
SMALL_FORMATS = [FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1,
                 FloatFormat(4, 3), FloatFormat(3, 4, "fn"), FloatFormat(1, 2, "none"), FloatFormat(5, 2, "none"),
                 FloatFormat(2, 2, "fn"), FloatFormat(4, 3, "none", bias=2)]
ALL_FORMATS = [FP32, FP16, BF16] + SMALL_FORMATS


def name(value) -> str:
    """Readable test ids: format names, short reprs of everything else."""
    return str(value) if isinstance(value, (FloatFormat, IntFormat)) else repr(value)[:24]


# --- integer formats -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, qmin, qmax", [
    (INT8, -128, 127), (UINT8, 0, 255), (INT4, -8, 7), (UINT4, 0, 15), (INT2, -2, 1), (UINT2, 0, 3),
    (BINARY, 0, 1), (IntFormat(1), -1, 0), (IntFormat(8, narrow_range=True), -127, 127),
    (IntFormat(8, signed=False, narrow_range=True), 1, 255), (IntFormat(2, narrow_range=True), -1, 1),
    (IntFormat(16), -32768, 32767),
], ids=name)
def test_int_format_range(fmt, qmin, qmax):
    assert (fmt.qmin, fmt.qmax, fmt.levels) == (qmin, qmax, qmax - qmin + 1)


@pytest.mark.parametrize("bits, error, match", [
    (0, ValueError, "bits must be between 1 and 16, got 0"),
    (17, ValueError, "bits must be between 1 and 16, got 17"),
    (4.0, TypeError, "pass 4 instead"),
    (True, TypeError, "bits must be an int, got bool"),
    ("8", TypeError, "bits must be an int, got str"),
], ids=repr)
def test_int_format_bad_bits(bits, error, match):
    with pytest.raises(error, match=match):
        IntFormat(bits)


# --- float format properties ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [FP32] + TORCH_FORMATS, ids=name)
def test_properties_match_torch_finfo(fmt):
    info = torch.finfo(fmt.torch_dtype)
    assert (fmt.max, fmt.min_normal, fmt.eps, fmt.bits) == (info.max, info.tiny, info.eps, info.bits)


@pytest.mark.parametrize("fmt, max_, min_normal, min_subnormal, has_inf, has_nan", [
    (FP32, 3.4028234663852886e38, 2.0**-126, 2.0**-149, True, True),
    (FP16, 65504.0, 2.0**-14, 2.0**-24, True, True),
    (BF16, 3.3895313892515355e38, 2.0**-126, 2.0**-133, True, True),
    (FP8_E5M2, 57344.0, 2.0**-14, 2.0**-16, True, True),
    (FP8_E4M3, 448.0, 2.0**-6, 2.0**-9, False, True),
    (FP6_E3M2, 28.0, 0.25, 0.0625, False, False),
    (FP6_E2M3, 7.5, 1.0, 0.125, False, False),
    (FP4_E2M1, 6.0, 1.0, 0.5, False, False),
], ids=name)
def test_properties_reference_table(fmt, max_, min_normal, min_subnormal, has_inf, has_nan):
    assert (fmt.max, fmt.min_normal, fmt.min_subnormal) == (max_, min_normal, min_subnormal)
    assert (fmt.has_inf, fmt.has_nan) == (has_inf, has_nan)


def test_names_dtypes_and_defaults():
    assert [f.name for f in ALL_FORMATS[:8]] == [
        "fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1"]
    assert FloatFormat(3, 4, "fn").name == "fp8_e3m4_fn"
    assert FloatFormat(4, 3, "none", bias=2).name == "fp8_e4m3_none_bias2"
    assert FloatFormat(5, 10, bias=15) == FP16 and FloatFormat(5, 10).bias == 15
    assert FP8_E4M3.torch_dtype == torch.float8_e4m3fn and FP4_E2M1.torch_dtype is None
    assert (default_saturate(FP16), default_saturate(FP4_E2M1)) == (False, True)


def test_e4m3fn_overflow_rule_is_what_this_torch_does():
    torch_gives = torch.tensor([1e4, math.inf]).to(torch.float8_e4m3fn).float()
    saturates = not bool(torch_gives[0].isnan())
    assert default_saturate(FP8_E4M3) == saturates
    if saturates:  # torch 2.13: +-448 for finite overflow and for inf
        assert torch_gives.tolist() == [448.0, 448.0]


# --- bit-exact casts against torch -------------------------------------------------------------

def assert_same_floats(actual: torch.Tensor, expected: torch.Tensor):
    """Same NaN positions; every other element has the same float32 bits (so -0.0 != +0.0)."""
    assert actual.dtype == expected.dtype == torch.float32
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    a, e = actual[~nan].view(torch.int32), expected[~nan].view(torch.int32)
    bad = (a != e).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first: x -> {actual[~nan][bad[0]]} vs {expected[~nan][bad[0]]}"


def with_ulps(x: torch.Tensor, ulps=(-2, -1, 0, 1, 2)) -> torch.Tensor:
    """x and its float32 neighbours +-1, +-2 ulps away, both signs."""
    bits = x.abs().float().view(torch.int32)
    near = torch.cat([(bits + k).clamp(min=0) for k in ulps]).view(torch.float32)
    return torch.cat([near, -near])


def hard_inputs(fmt: FloatFormat, n_random: int = 2_000_000, n_dense: int = 1_000_000) -> torch.Tensor:
    """A few million float32 inputs that probe every rounding case of fmt."""
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31, (n_random,), generator=g).to(torch.int32).view(torch.float32)
    top_step = math.ldexp(1.0, fmt.max_exp - fmt.man_bits)
    values = torch.tensor([0.0, 1.0, fmt.max], dtype=torch.float64)
    midpoints = torch.empty(0, dtype=torch.float64)
    if fmt.bits <= 16:  # every value and every midpoint, including the overflow threshold max + step/2
        values = torch.cat([grid(fmt).double(), torch.tensor([fmt.max + top_step], dtype=torch.float64)])
        values = values[values >= 0]
        midpoints = (values[:-1] + values[1:]) / 2
        assert torch.equal(midpoints.float().double(), midpoints)  # exact in float32
    one = torch.tensor(1.0).view(torch.int32)
    around_one = (one + torch.arange(n_dense, dtype=torch.int32)).view(torch.float32)  # every float32 from 1 up
    tiny = torch.rand(n_dense // 2, generator=g, dtype=torch.float64) * 2 * fmt.min_normal  # subnormal range
    threshold = torch.tensor(fmt.max + top_step / 2).float().view(torch.int32)
    around_max = (threshold + torch.arange(-3000, 3000, dtype=torch.int32)).view(torch.float32)
    specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-45, 3.4028235e38])
    return torch.cat([random_bits, with_ulps(midpoints.float()), with_ulps(values.float()), around_one,
                      -around_one, with_ulps(tiny.float(), (0,)), with_ulps(around_max, (0,)), specials])


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=name)
def test_cast_is_bit_exact_with_torch(fmt):
    x = hard_inputs(fmt)
    assert x.numel() > 3_000_000
    assert_same_floats(cast(x, fmt), x.to(fmt.torch_dtype).float())


def test_fp32_cast_is_identity():
    x = hard_inputs(FP32, n_random=500_000)
    assert_same_floats(cast(x, FP32), x)


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=name)
def test_float64_input_is_rounded_through_float32_like_torch(fmt):
    # 1 + 2**-11 + 2**-40 is just above the fp16 tie between 1 and 1 + 2**-10: rounding once
    # gives 1 + 2**-10 (numpy does that), rounding through float32 first gives the tie -> 1.
    x = torch.tensor([1 + 2**-11 + 2**-40, 1 + 2**-8 + 2**-40, -(1 + 2**-4 + 2**-40)], dtype=torch.float64)
    assert_same_floats(cast(x, fmt), x.to(fmt.torch_dtype).float())
    assert cast(x, FP16)[0].item() == 1.0


def test_cast_accepts_numpy_lists_and_scalars():
    assert cast(np.array([1.1], dtype=np.float32), FP16).tolist() == [1.099609375]
    assert cast([0.1, -7.0], FP4_E2M1).tolist() == [0.0, -6.0]
    assert cast(3, FP8_E4M3).shape == ()
    assert cast(torch.empty(0), FP16).shape == (0,)


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=name)
def test_every_bit_pattern_decodes_like_torch(fmt):
    patterns = torch.arange(2**fmt.bits)
    view_as = torch.uint8 if fmt.bits == 8 else torch.int16
    expected = patterns.to(view_as).view(fmt.torch_dtype).float()
    assert_same_floats(decode(patterns, fmt), expected)
    assert_same_floats(decode(patterns.to(view_as), fmt), expected)  # int16 views hold negative numbers


@pytest.mark.parametrize("fmt", [FP32] + TORCH_FORMATS, ids=name)
def test_encode_matches_torch_bit_patterns(fmt):
    x = hard_inputs(fmt, n_random=200_000)
    x = x[~torch.isnan(x)]
    view_as = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[fmt.bits]
    expected = x.to(fmt.torch_dtype).view(view_as).long() & (2**fmt.bits - 1)
    assert torch.equal(encode(x, fmt), expected)
    # NaN: qedu writes the quiet NaN (ieee) or the all-ones pattern (fn); torch's pattern decodes to NaN too.
    nan_bits = int(encode(torch.tensor(math.nan), fmt))
    assert math.isnan(decode(nan_bits, fmt).item())
    assert math.isnan(decode(torch.tensor(math.nan).to(fmt.torch_dtype).view(view_as).long(), fmt).item())


# --- overflow and saturation -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt, x, saturate, expected", [
    (FP16, [65519.0, 65520.0, math.inf], False, [65504.0, math.inf, math.inf]),
    (FP16, [65520.0, 1e30, math.inf], True, [65504.0, 65504.0, math.inf]),
    (FP8_E5M2, [61439.0, 61440.0], None, [57344.0, math.inf]),
    (FP8_E4M3, [464.0, 464.00003, 1e4, math.inf], True, [448.0, 448.0, 448.0, 448.0]),
    (FP8_E4M3, [464.0, 464.00003, 1e4, math.inf], False, [448.0, math.nan, math.nan, math.nan]),
    (FP4_E2M1, [5.0, 6.9, 7.0, math.inf], None, [4.0, 6.0, 6.0, 6.0]),
    (FP4_E2M1, [6.9, 7.0, -7.0], False, [6.0, math.nan, math.nan]),
    (FP6_E3M2, [30.0, 1e9], None, [28.0, 28.0]),
], ids=name)
def test_overflow(fmt, x, saturate, expected):
    y = cast(torch.tensor(x), fmt, saturate=saturate)
    e = torch.tensor(expected)
    assert torch.equal(torch.isnan(y), torch.isnan(e)) and torch.equal(y[~e.isnan()], e[~e.isnan()])


def test_signed_zero_and_underflow():
    x = torch.tensor([1e-42, -1e-42, 0.0, -0.0])  # below half of every min_subnormal
    for fmt in ALL_FORMATS[1:]:
        bits = cast(x, fmt).view(torch.int32)
        assert bits.tolist() == [0, -(2**31), 0, -(2**31)], fmt.name
    assert cast(torch.tensor([0.25, 0.2500001, 0.75]), FP4_E2M1).tolist() == [0.0, 0.5, 1.0]  # ties to even


# --- formats torch cannot cast: hand grids and brute force -------------------------------------------

def hand_grid(positive):
    positive = sorted(set(positive))
    return [-v for v in reversed(positive[1:])] + positive


@pytest.mark.parametrize("fmt, positive", [
    (FP4_E2M1, [0, 0.5, 1, 1.5, 2, 3, 4, 6]),
    (FP6_E2M3, [k / 8 for k in range(8)] + [2.0**e * (1 + m / 8) for e in range(0, 3) for m in range(8)]),
    (FP6_E3M2, [k / 16 for k in range(4)] + [2.0**e * (1 + m / 4) for e in range(-2, 5) for m in range(4)]),
    (FP8_E4M3, [k / 512 for k in range(8)] + [2.0**e * (1 + m / 8) for e in range(-6, 9) for m in range(8)][:-1]),
    (FloatFormat(1, 2, "none"), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]),
], ids=name)
def test_grid_matches_hand_derived_values(fmt, positive):
    assert grid(fmt).tolist() == hand_grid(positive)


def test_grid_sizes_and_limits():
    assert grid(FP16).numel() == 2 * 31 * 1024 - 1  # 31 finite binades of 1024 patterns, zero once
    assert grid(FP8_E4M3).numel() == 253  # 256 patterns - 2 NaNs - one duplicate zero
    with pytest.raises(ValueError, match="at most 16 bits"):
        grid(FP32)


def brute_force_cast(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Nearest value of the grid; on a tie the one with the even bit pattern. |x| <= max only."""
    positive = decode(torch.arange(2 ** (fmt.bits - 1)), fmt).double()
    patterns = torch.arange(2 ** (fmt.bits - 1))[torch.isfinite(positive)]
    positive = positive[torch.isfinite(positive)]
    a = x.double().abs()
    hi = torch.searchsorted(positive, a).clamp(max=len(positive) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - positive[lo], positive[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (patterns[hi] % 2 == 0))
    return torch.copysign(torch.where(pick_hi, positive[hi], positive[lo]), x.double()).float()


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=name)
def test_cast_matches_brute_force_nearest_value(fmt):
    x = hard_inputs(fmt, n_random=0, n_dense=100_000)
    x = x[torch.isfinite(x) & (x.abs() <= fmt.max)]
    g = torch.Generator().manual_seed(1)
    x = torch.cat([x, (torch.rand(200_000, generator=g) * 2 - 1) * fmt.max])
    assert_same_floats(cast(x, fmt), brute_force_cast(x, fmt))


@pytest.mark.parametrize("fmt", ALL_FORMATS[1:], ids=name)
def test_grid_points_are_fixed_points_and_round_trip(fmt):
    values = grid(fmt)
    assert torch.equal(cast(values, fmt), values)
    assert torch.equal(decode(encode(values, fmt), fmt), values)
    patterns = torch.arange(2**fmt.bits)
    finite = torch.isfinite(decode(patterns, fmt))
    assert torch.equal(encode(decode(patterns, fmt)[finite], fmt), patterns[finite])


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=name)
def test_cast_is_monotone(fmt):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-(2**31), 2**31, (300_000,), generator=g).to(torch.int32).view(torch.float32)
    x = torch.sort(x[~torch.isnan(x)]).values
    y = cast(x, fmt, saturate=True)
    assert bool((y[1:] >= y[:-1]).all())


# --- property tests --------------------------------------------------------------------------------

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(x=finite32, fmt=st.sampled_from(ALL_FORMATS), saturate=st.sampled_from([None, True, False]))
def test_cast_is_idempotent(x, fmt, saturate):
    once = cast(torch.tensor([x]), fmt, saturate)
    twice = cast(once, fmt, saturate)
    assert_same_floats(twice, once)


@settings(max_examples=300, deadline=None)
@given(x=finite32, fmt=st.sampled_from(ALL_FORMATS))
def test_error_is_at_most_half_the_local_spacing(x, fmt):
    if abs(x) > fmt.max:
        return
    e = max(math.frexp(abs(x))[1] - 1, fmt.min_exp)  # binade of x (subnormals: the lowest one)
    spacing = math.ldexp(1.0, e - fmt.man_bits)
    assert abs(x - cast(torch.tensor([x]), fmt).item()) <= spacing / 2


@settings(max_examples=200, deadline=None)
@given(x=finite32, fmt=st.sampled_from(ALL_FORMATS))
def test_encode_decode_round_trip(x, fmt):
    assert_same_floats(decode(encode(torch.tensor([x]), fmt), fmt), cast(torch.tensor([x]), fmt))


# --- fields -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("x, fmt, text, kind", [
    (1.0, FP16, "0 01111 0000000000", "normal"),
    (-1.5, FP16, "1 01111 1000000000", "normal"),
    (1.0, FP32, "0 01111111 00000000000000000000000", "normal"),
    (448.0, FP8_E4M3, "0 1111 110", "normal"),
    (2.0**-9, FP8_E4M3, "0 0000 001", "subnormal"),
    (-0.0, BF16, "1 00000000 0000000", "zero"),
    (math.inf, FP8_E5M2, "0 11111 00", "inf"),
    (math.nan, FP8_E4M3, "0 1111 111", "nan"),
    (6.0, FP4_E2M1, "0 11 1", "normal"),
], ids=name)
def test_fields(x, fmt, text, kind):
    f = fields(x, fmt)
    assert (str(f), f.kind) == (text, kind)
    g = fields(bits=f.bits, fmt=fmt)
    assert (g.sign, g.exponent, g.mantissa, g.bits, str(g)) == (f.sign, f.exponent, f.mantissa, f.bits, text)


def test_fields_formula():
    assert fields(0.1, FP16).formula == "+2^(11-15) * (1 + 614/1024) = 0.099975586"
    assert fields(2.0**-9, FP8_E4M3).formula == "+2^(1-7) * (0 + 1/8) = 0.001953125"


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(exp_bits=9, man_bits=2), ValueError, "exp_bits must be between 1 and 8, got 9"),
    (dict(exp_bits=0, man_bits=2), ValueError, "exp_bits must be between 1 and 8, got 0"),
    (dict(exp_bits=4, man_bits=24), ValueError, "man_bits must be between 1 and 23, got 24"),
    (dict(exp_bits=4, man_bits=0), ValueError, "man_bits must be between 1 and 23, got 0"),
    (dict(exp_bits=4.0, man_bits=3), TypeError, "exp_bits must be an int.*pass 4 instead"),
    (dict(exp_bits=4, man_bits=True), TypeError, "man_bits must be an int, got bool"),
    (dict(exp_bits=4, man_bits=3, special="IEEE"), ValueError, "special must be one of.*got 'IEEE'"),
    (dict(exp_bits=1, man_bits=3, special="ieee"), ValueError, "needs exp_bits >= 2.*use special='none'"),
    (dict(exp_bits=8, man_bits=7, bias=100), ValueError, r"bias=100 .*outside float32.*choose a bias in 127\.\.143"),
    (dict(exp_bits=4, man_bits=3, bias=2.5), TypeError, "bias must be an int"),
], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_bad_float_format(kwargs, error, match):
    with pytest.raises(error, match=match):
        FloatFormat(**kwargs)


@pytest.mark.parametrize("call, error, match", [
    (lambda: cast([1.0], "fp16"), TypeError, "fmt must be a FloatFormat such as qedu.formats.FP16, got str"),
    (lambda: cast([1.0], INT8), TypeError, "fmt must be a FloatFormat.*got IntFormat"),
    (lambda: cast([1.0], FP16, saturate=1), TypeError, "saturate must be True, False or None, got 1"),
    (lambda: cast("abc", FP16), TypeError, "x must be"),
    (lambda: cast(torch.tensor([True]), FP16), TypeError, "x must hold real numbers"),
    (lambda: decode(torch.tensor([1.0]), FP16), TypeError, "bits must be integer bit patterns"),
    (lambda: decode(256, FP8_E4M3), ValueError, r"bits for fp8_e4m3fn must lie in -128\.\.255.*got values 256\.\.256"),
    (lambda: encode([math.nan], FP4_E2M1), ValueError, "fp4_e2m1 has no NaN pattern"),
    (lambda: encode([7.0], FP4_E2M1, saturate=False), ValueError, "saturate=True"),
    (lambda: fields(1.0, FP16, bits=3), TypeError, "exactly one of x"),
    (lambda: fields([1.0, 2.0], FP16), ValueError, "fields\\(\\) shows one number; x has 2 elements"),
], ids=["cast-str-fmt", "cast-int-fmt", "cast-saturate-int", "cast-str-x", "cast-bool-x", "decode-float",
        "decode-range", "encode-nan-fp4", "encode-overflow-fp4", "fields-both", "fields-many"])
def test_bad_input_messages(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- lesson helpers -----------------------------------------------------------------------------------

def test_repeated_add_reference_values_and_torch():
    """Lesson 01's swamping numbers: add 1e-3 to 1.0 ten thousand times (true sum 11)."""
    finals = {f.name: repeated_add(1.0, 1e-3, 10_000, f)[-1].item() for f in (FP32, BF16, FP16)}
    assert {k: round(v, 4) for k, v in finals.items()} == {"fp32": 11.0008, "bf16": 1.0, "fp16": 4.0}
    for fmt in (BF16, FP16):  # the same loop in torch's own dtypes
        acc, step = torch.tensor(1.0, dtype=fmt.torch_dtype), torch.tensor(1e-3, dtype=fmt.torch_dtype)
        for _ in range(10_000):
            acc = acc + step
        assert acc.item() == finals[fmt.name]
    history = repeated_add(0.0, 1.0, 5, FP4_E2M1)
    assert history.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]  # 4 + 1 = 5 ties back to 4


def test_format_table_lists_each_format():
    lines = format_table().splitlines()
    assert lines[0].split()[:2] == ["format", "bits"]
    assert [line.split()[0] for line in lines[1:]] == ["fp32", "bf16", "fp16", "fp8_e5m2", "fp8_e4m3fn", "fp6_e3m2", "fp4_e2m1"]
    assert "65504" in lines[3] and "448" in lines[5]
    with pytest.raises(TypeError, match="fmt must be a FloatFormat"):
        format_table(["fp16"])


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
ISSUE20_BAD = {
    "repeated-add-start-nan": (lambda: repeated_add(math.nan, 1e-3, 10, BF16), ValueError, r"start must be a finite number"),
    "repeated-add-step-nan": (lambda: repeated_add(1.0, math.nan, 10, BF16), ValueError, r"step must be a finite number"),
    "repeated-add-step-inf": (lambda: repeated_add(1.0, math.inf, 10, BF16), ValueError, r"step must be a finite number"),
    "repeated-add-start-str": (lambda: repeated_add("1.0", 1e-3, 10, BF16), TypeError, r"start must be a number"),
    "repeated-add-step-str": (lambda: repeated_add(1.0, "0.001", 10, BF16), TypeError, r"step must be a number"),
    "cast-meta": (lambda: cast(torch.empty(2, device="meta"), FP16), ValueError, r"x is a meta tensor"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_repeated_add_overflow_is_the_formats_own():
    """A sum beyond fmt.max overflows as fp16 itself does (documented), not as a silent NaN."""
    sums = repeated_add(65000.0, 1000.0, 3, FP16)
    expected = torch.tensor(65000.0, dtype=torch.float16)
    for _ in range(3):
        expected = expected + torch.tensor(1000.0, dtype=torch.float16)
    assert sums[-1].item() == expected.float().item() == math.inf
