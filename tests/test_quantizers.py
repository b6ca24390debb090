"""qedu.quantizers: exact agreement with torch, rounding modes, properties, and clear errors."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.formats import BINARY, INT4, INT8, UINT4, UINT8, IntFormat
from qedu.granularity import PerChannel, PerGroup
from qedu.quantizers import (
    FLOAT32_EPS, choose_qparams, choose_qparams_from_minmax, dequantize, fake_quantize, quantization_error, quantize,
    round_codes,
)

# torch 2.13 warns that qint8/quint8 are deprecated (pytorch#184982); only the cross-checks use them.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*", "ignore:Please use quant_min and quant_max")

FORMATS = [INT8, UINT8, INT4, UINT4, IntFormat(8, narrow_range=True), IntFormat(2), BINARY, IntFormat(16)]


def f32(value: float) -> float:
    """The float32 nearest to value, as a Python float (so torch and qedu see the same scale)."""
    return float(torch.tensor(value, dtype=torch.float32))


def tricky_values(scale: float, fmt: IntFormat, zero_point: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Ties (k + 1/2) * scale and their float32 neighbours, random values, far outliers, grid ends."""
    k = torch.randint(fmt.qmin - zero_point - 3, fmt.qmax - zero_point + 3, (n,), generator=g).float()
    ties = (k + 0.5) * scale
    up = torch.nextafter(ties, torch.full_like(ties, math.inf))
    down = torch.nextafter(ties, torch.full_like(ties, -math.inf))
    width = scale * (fmt.qmax - fmt.qmin)
    inside = (torch.rand(n, generator=g) - 0.5) * 1.2 * width - zero_point * scale
    far = torch.randn(n // 10, generator=g) * width * 1e6
    ends = torch.tensor([fmt.qmin, fmt.qmax], dtype=torch.float32).sub(zero_point).mul(scale)
    return torch.cat([ties, up, down, inside, far, ends, torch.tensor([0.0, -12.15])])


def random_scale(g: torch.Generator, exact_ties: bool) -> float:
    """A power of two (x * (1/scale) is then exact, so ties are exact) or a random float32."""
    exponent = torch.empty(()).uniform_(-10, 4, generator=g)
    return 2.0 ** int(exponent) if exact_ties else f32(2.0 ** float(exponent))


# ----------------------------------------------------------------------------- exactness vs torch
def test_reciprocal_multiply_decides_near_ties():
    """REFERENCE's example: x / scale and x * (1/scale) round differently; torch uses the latter."""
    x = torch.tensor([-12.15])
    assert torch.round(x / 0.1).item() == -121
    assert quantize(x, 0.1, 0, INT8).item() == -122
    assert fake_quantize(x, 0.1, 0, INT8).item() == torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127).item()


def test_fake_quantize_per_tensor_equals_torch_on_a_million_values():
    g = torch.Generator().manual_seed(0)
    n_checked = 0
    for i in range(32):
        fmt = FORMATS[i % len(FORMATS)]
        scale = random_scale(g, exact_ties=i % 2 == 0)
        zero_point = int(torch.randint(fmt.qmin, fmt.qmax + 1, (), generator=g))
        x = tricky_values(scale, fmt, zero_point, 8000, g)
        expected = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, fmt.qmin, fmt.qmax)
        q = quantize(x, scale, zero_point, fmt)
        assert q.dtype == torch.int32 and bool(((q >= fmt.qmin) & (q <= fmt.qmax)).all())
        x_hat = fake_quantize(x, scale, zero_point, fmt)
        assert torch.equal(x_hat, expected), (fmt, scale, zero_point)
        assert torch.equal(dequantize(q, scale, zero_point), expected)
        n_checked += x.numel()
    assert n_checked >= 1_000_000


@pytest.mark.parametrize("shape, axis", [((64, 4000), 0), ((8, 16, 500), 1), ((300, 40), 1)], ids=str)
def test_fake_quantize_per_channel_equals_torch(shape, axis):
    g = torch.Generator().manual_seed(1)
    fmt = IntFormat(8, signed=axis == 0)
    n_ch = shape[axis]
    keep = [1] * len(shape)
    keep[axis] = n_ch
    scale = (2.0 ** torch.randint(-8, 2, (n_ch,), generator=g).float()).reshape(keep)
    scale.view(-1)[::2] *= 1.37  # half of the channels get non-power-of-two scales (near ties)
    zero_point = torch.randint(fmt.qmin, fmt.qmax + 1, (n_ch,), generator=g, dtype=torch.int32).reshape(keep)
    k = torch.randint(fmt.qmin - 140, fmt.qmax + 10, shape, generator=g).float()
    ties = (k + 0.5) * scale
    x = torch.cat([ties, torch.nextafter(ties, torch.full_like(ties, math.inf)), torch.randn(shape, generator=g) * 50 * scale,
                   torch.randn(shape, generator=g) * 1e6], dim=(axis + 1) % len(shape))  # not along the channels
    expected = torch.fake_quantize_per_channel_affine(x, scale.reshape(-1), zero_point.reshape(-1), axis, fmt.qmin, fmt.qmax)
    assert torch.equal(fake_quantize(x, scale, zero_point, fmt), expected)


def test_quantize_per_tensor_int_repr_equals_torch_when_zero_point_is_zero():
    g = torch.Generator().manual_seed(2)
    for i in range(12):
        scale = random_scale(g, exact_ties=i % 2 == 0)
        x = tricky_values(scale, INT8, 0, 20000, g)
        expected = torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr().to(torch.int32)
        assert torch.equal(quantize(x, scale, 0, INT8), expected)


def test_quantize_per_tensor_with_zero_point_rounds_after_adding_it():
    """torch.quantize_per_tensor computes rint(fma(x, 1/scale, zero_point)): the zero point is added
    before rounding, so at (near) ties it can be one code away from fake_quantize and from qedu.
    We prove that this is the only difference."""
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        fmt, dtype = (INT8, torch.qint8) if i % 2 else (UINT8, torch.quint8)
        scale = random_scale(g, exact_ties=i % 4 < 2)
        zero_point = int(torch.randint(fmt.qmin, fmt.qmax + 1, (), generator=g))
        x = tricky_values(scale, fmt, zero_point, 20000, g)
        torch_q = torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr().to(torch.int32)
        v = x * (1.0 / torch.tensor(scale))
        fused = (x.double() * (1.0 / torch.tensor(scale)).double() + zero_point).float()  # one rounding, like fma
        assert torch.equal(torch_q, torch.round(fused).clamp(fmt.qmin, fmt.qmax).to(torch.int32))
        differ = quantize(x, scale, zero_point, fmt) != torch_q
        near_tie = ((v - torch.floor(v)) - 0.5).abs() < 1e-3
        assert bool((differ <= near_tie).all()), "qedu and torch differ away from a tie"
        assert bool(((quantize(x, scale, zero_point, fmt) - torch_q).abs() <= 1).all())


def test_quantize_per_channel_int_repr():
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(16, 1, generator=g) * 0.5 + 0.01
    k = torch.randint(-140, 140, (16, 5000), generator=g).float()
    x = torch.cat([(k + 0.5) * scale, torch.randn(16, 5000, generator=g) * 60 * scale], dim=1)
    zeros = torch.zeros(16, dtype=torch.int64)
    expected = torch.quantize_per_channel(x, scale.reshape(-1), zeros, 0, torch.qint8).int_repr().to(torch.int32)
    assert torch.equal(quantize(x, scale, 0, INT8), expected)  # zero point 0: identical, ties included
    zero_point = torch.randint(-100, 100, (16, 1), generator=g, dtype=torch.int32)
    torch_q = torch.quantize_per_channel(x, scale.reshape(-1), zero_point.reshape(-1), 0, torch.qint8).int_repr().to(torch.int32)
    # torch's per-channel kernel adds the zero point in float32 before rounding (two roundings)
    v = x * (1.0 / scale)
    assert torch.equal(torch_q, torch.round(v + zero_point.float()).clamp(-128, 127).to(torch.int32))
    differ = quantize(x, scale, zero_point, INT8) != torch_q
    assert bool((differ <= (((v - torch.floor(v)) - 0.5).abs() < 1e-3)).all())


def test_dequantize_equals_torch():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        scale = random_scale(g, exact_ties=False)
        zero_point = int(torch.randint(-128, 128, (), generator=g))
        qx = torch.quantize_per_tensor(torch.randn(10007, generator=g) * 100 * scale, scale, zero_point, torch.qint8)
        assert torch.equal(dequantize(qx.int_repr(), scale, zero_point), qx.dequantize())


# ----------------------------------------------------------------------------- observers
def observer_inputs(n: int):
    """Random shapes and magnitudes, including all-positive, all-negative, constant and zero tensors."""
    g = torch.Generator().manual_seed(6)
    for i in range(n):
        shape = (int(torch.randint(1, 7, (), generator=g)), int(torch.randint(1, 33, (), generator=g)))
        x = torch.randn(shape, generator=g) * 2.0 ** float(torch.empty(()).uniform_(-10, 10, generator=g))
        kind = i % 5
        if kind == 1:
            x = x.abs() + float(torch.rand((), generator=g))
        elif kind == 2:
            x = -x.abs()
        elif kind == 3:
            x = torch.full(shape, float(torch.randn((), generator=g)))
        elif kind == 4:
            x = torch.zeros(shape)
        yield x


OBSERVER_CONFIGS = [(dtype, symmetric, reduce_range) for dtype in ("qint8", "quint8") for symmetric in (False, True)
                    for reduce_range in (False, True) if not (dtype == "quint8" and symmetric and reduce_range)]


@pytest.mark.parametrize("dtype, symmetric, reduce_range", OBSERVER_CONFIGS,
                         ids=[f"{d}-{'sym' if s else 'affine'}{'-reduce_range' if r else ''}" for d, s, r in OBSERVER_CONFIGS])
def test_choose_qparams_reproduces_torch_observers(dtype, symmetric, reduce_range):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    signed = dtype == "qint8"
    fmt = IntFormat(7 if reduce_range else 8, signed=signed)  # reduce_range = one bit fewer
    torch_dtype = torch.qint8 if signed else torch.quint8
    for x in observer_inputs(120):
        obs = MinMaxObserver(dtype=torch_dtype, reduce_range=reduce_range,
                             qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine)
        obs(x)
        scale, zero_point = obs.calculate_qparams()
        ours = choose_qparams(x, fmt, symmetric=symmetric)
        assert torch.equal(ours[0].reshape(1), scale) and torch.equal(ours[1].reshape(1).long(), zero_point.long())
        obs = PerChannelMinMaxObserver(ch_axis=1, dtype=torch_dtype, reduce_range=reduce_range,
                                       qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine)
        obs(x)
        scale, zero_point = obs.calculate_qparams()
        ours = choose_qparams(x, fmt, PerChannel(1), symmetric=symmetric)
        assert torch.equal(ours[0].reshape(-1), scale) and torch.equal(ours[1].reshape(-1).long(), zero_point.long())


def test_symmetric_rules_half_range_clips_half_a_step_no_clip_does_not():
    x = torch.tensor([-1.0, 0.3, 1.0])
    scale, zero_point = choose_qparams(x, INT8)  # torch's rule: max|x| / 127.5
    assert scale.item() == f32(1 / 127.5) and zero_point.item() == 0
    x_hat = fake_quantize(x, scale, zero_point, INT8)
    assert x_hat[2].item() == f32(127 * scale.item()) < 1.0  # +max|x| clipped ...
    assert (1.0 - x_hat[2]).item() == pytest.approx(scale.item() / 2, rel=1e-4)  # ... by half a step
    scale, zero_point = choose_qparams(x, INT8, symmetric_rule="no_clip")  # max|x| / 127
    assert scale.item() == f32(1 / 127)
    assert fake_quantize(x, scale, zero_point, INT8)[[0, 2]].tolist() == [-1.0, 1.0]


def test_unsigned_symmetric_zero_point_and_constant_inputs():
    assert choose_qparams(torch.tensor([-3.0, 2.0]), UINT8)[1].item() == 128  # as torch's quint8 observer
    for x in [torch.zeros(5), torch.full((5,), 3.0), torch.full((5,), -2.0), torch.tensor([1e-30])]:
        for symmetric in (True, False):
            scale, zero_point = choose_qparams(x, INT8, symmetric=symmetric)
            assert scale.item() >= FLOAT32_EPS and scale.dtype == torch.float32 and zero_point.dtype == torch.int32
            assert torch.equal(fake_quantize(torch.zeros(1), scale, zero_point, INT8), torch.zeros(1))  # 0 exact
    assert choose_qparams(torch.zeros(3), INT8)[0].item() == f32(FLOAT32_EPS)


def test_choose_qparams_shapes_broadcast_against_x():
    x = torch.randn(6, 64)
    assert choose_qparams(x, INT8)[0].shape == ()
    assert choose_qparams(x, INT8, PerChannel(0))[0].shape == (6, 1)
    scale, zero_point = choose_qparams(x, INT4, PerGroup(32), symmetric=False)
    assert scale.shape == zero_point.shape == (6, 64)
    assert PerGroup(32).compact(scale).shape == (6, 2)


# ----------------------------------------------------------------------------- rounding modes
def test_rounding_modes_follow_their_math():
    g = torch.Generator().manual_seed(7)
    k = torch.randint(-300, 300, (50000,), generator=g).float()
    v = torch.cat([k + 0.5, torch.nextafter(k + 0.5, k), torch.randn(50000, generator=g) * 100,
                   torch.tensor([0.49999997, -0.49999997, -0.5, 0.5, -0.0])])
    assert torch.equal(round_codes(v, "half_even"), torch.round(v))
    assert torch.equal(round_codes(v, "floor"), torch.floor(v))
    v64 = v.double()  # exact for float32 inputs, so |v| + 0.5 is exact too
    assert torch.equal(round_codes(v, "half_away").double(), torch.sign(v64) * torch.floor(v64.abs() + 0.5))
    assert round_codes(torch.tensor([2.5, -2.5, 3.5]), "half_away").tolist() == [3.0, -3.0, 4.0]


def test_floor_and_half_away_in_quantize():
    x = torch.tensor([0.05, -0.05, 0.15, -0.29, 0.31])
    scale = 0.125  # exact reciprocal: v = [0.4, -0.4, 1.2, -2.32, 2.48]
    assert quantize(x, scale, 3, INT8, "floor").tolist() == [3, 2, 4, 0, 5]
    assert quantize(torch.tensor([0.0625, -0.0625]), scale, 3, INT8, "half_away").tolist() == [4, 2]
    assert quantize(torch.tensor([0.0625, -0.0625]), scale, 3, INT8).tolist() == [3, 3]  # half_even: 0.5 -> 0


@pytest.mark.parametrize("frac", [0.01, 0.25, 0.5, 0.7, 0.99])
def test_stochastic_rounding_is_unbiased(frac):
    """Round-up frequency for x = a + frac*(b - a) must be frac: a binomial z-test with a fixed seed."""
    n, scale = 40000, 0.25
    x = torch.full((n,), (3 + frac) * scale)
    q = quantize(x, scale, 0, INT8, "stochastic", torch.Generator().manual_seed(11))
    assert set(q.unique().tolist()) <= {3, 4}
    ups = int((q == 4).sum())
    z = (ups - n * frac) / math.sqrt(n * frac * (1 - frac))
    assert abs(z) < 4.5, f"round-up frequency {ups / n:.4f} vs {frac} (z = {z:.2f})"


def test_stochastic_rounding_is_reproducible_and_exact_on_grid():
    x = torch.randn(1000)
    a = quantize(x, 0.05, 0, INT8, "stochastic", torch.Generator().manual_seed(0))
    b = quantize(x, 0.05, 0, INT8, "stochastic", torch.Generator().manual_seed(0))
    c = quantize(x, 0.05, 0, INT8, "stochastic", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    grid = torch.arange(-128, 128).float() * 0.25
    assert torch.equal(quantize(grid, 0.25, 0, INT8, "stochastic"), torch.arange(-128, 128, dtype=torch.int32))


# ----------------------------------------------------------------------------- properties
@st.composite
def qsetup(draw):
    bits = draw(st.integers(1, 8))
    fmt = IntFormat(bits, signed=draw(st.booleans()))
    scale = f32(draw(st.floats(1e-4, 1e2)))
    zero_point = draw(st.integers(fmt.qmin, fmt.qmax))
    values = draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=50))
    return torch.tensor(values, dtype=torch.float32), scale, zero_point, fmt


@settings(max_examples=150, deadline=None)
@given(qsetup(), st.sampled_from(["half_even", "half_away", "floor", "stochastic"]))
def test_codes_in_range(setup, rounding):
    x, scale, zero_point, fmt = setup
    q = quantize(x, scale, zero_point, fmt, rounding, torch.Generator().manual_seed(0))
    assert q.dtype == torch.int32 and bool(((q >= fmt.qmin) & (q <= fmt.qmax)).all())


@settings(max_examples=150, deadline=None)
@given(qsetup(), st.sampled_from(["half_even", "half_away"]))
def test_fake_quant_is_idempotent(setup, rounding):
    x, scale, zero_point, fmt = setup
    x_hat = fake_quantize(x, scale, zero_point, fmt, rounding)
    assert torch.equal(fake_quantize(x_hat, scale, zero_point, fmt, rounding), x_hat)


@settings(max_examples=150, deadline=None)
@given(qsetup())
def test_grid_points_are_fixed_points(setup):
    _, scale, zero_point, fmt = setup
    grid = (torch.arange(fmt.qmin, fmt.qmax + 1) - zero_point).float() * scale
    for rounding in ("half_even", "half_away"):
        assert torch.equal(fake_quantize(grid, scale, zero_point, fmt, rounding), grid)


def test_floor_sees_the_float32_error_of_x_times_reciprocal():
    """Documented hazard: x * (1/scale) can land a hair below an integer on a grid point, and
    floor then drops a whole step; rounding to nearest has half a step of slack and is immune."""
    scale = 56.046875
    assert (torch.tensor(scale) * (1 / torch.tensor(scale))).item() < 1.0
    assert quantize(torch.tensor([scale]), scale, 0, INT8, "floor").item() == 0
    assert quantize(torch.tensor([scale]), scale, 0, INT8).item() == 1


@settings(max_examples=150, deadline=None)
@given(qsetup())
def test_error_at_most_half_a_step_inside_the_range(setup):
    x, scale, zero_point, fmt = setup
    lo, hi = (fmt.qmin - zero_point) * scale, (fmt.qmax - zero_point) * scale
    inside = x[(x >= lo) & (x <= hi)]
    if inside.numel():
        err = (inside - fake_quantize(inside, scale, zero_point, fmt)).abs()
        assert bool((err <= scale / 2 * (1 + 1e-4) + 1e-6 * inside.abs()).all())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=40), st.integers(2, 8), st.booleans())
def test_choose_qparams_error_bound_on_its_own_data(values, bits, symmetric):
    """With min/max qparams every value (also torch's half-step clipped max) is within scale/2."""
    x = torch.tensor(values)
    fmt = IntFormat(bits)
    scale, zero_point = choose_qparams(x, fmt, symmetric=symmetric)
    assert scale.item() > 0
    err = (x - fake_quantize(x, scale, zero_point, fmt)).abs()
    assert bool((err <= scale / 2 * (1 + 1e-4) + 1e-6 * x.abs()).all())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 8), st.booleans(), st.integers(0, 2**16))
def test_per_channel_and_per_group_equal_per_tensor_slice_by_slice(rows, n_groups, group_size, symmetric, seed):
    x = torch.randn(rows, n_groups * group_size, generator=torch.Generator().manual_seed(seed)) * 3
    for granularity, slices in [
        (PerChannel(0), [(i, slice(None)) for i in range(rows)]),
        (PerChannel(1), [(slice(None), j) for j in range(x.shape[1])]),
        (PerGroup(group_size), [(i, slice(j * group_size, (j + 1) * group_size)) for i in range(rows) for j in range(n_groups)]),
    ]:
        scale, zero_point = choose_qparams(x, INT4, granularity, symmetric=symmetric)
        q = quantize(x, scale, zero_point, INT4)
        for index in slices:
            s, z = choose_qparams(x[index], INT4, symmetric=symmetric)
            assert torch.equal(q[index], quantize(x[index], s, z, INT4))


# ----------------------------------------------------------------------------- error metrics
def test_quantization_error_values():
    assert quantization_error(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.0])) == (0.0, math.inf)
    assert quantization_error(torch.zeros(3), torch.zeros(3)).sqnr_db == math.inf
    assert quantization_error(torch.zeros(2), torch.tensor([0.0, 1.0])) == (0.5, -math.inf)
    err = quantization_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))
    assert err.mse == 0.125 and err.sqnr_db == pytest.approx(10 * math.log10(25 / 0.25))


def test_sqnr_gains_about_six_db_per_bit():
    x = torch.rand(100000, generator=torch.Generator().manual_seed(0)) * 2 - 1  # uniform: the textbook case
    sqnr = []
    for bits in (6, 8, 10):
        fmt = IntFormat(bits)
        x_hat = fake_quantize(x, *choose_qparams(x, fmt), fmt)
        sqnr.append(quantization_error(x, x_hat).sqnr_db)
    assert np.diff(sqnr) / 2 == pytest.approx([6.02, 6.02], abs=0.15)


# ----------------------------------------------------------------------------- bad input
X = torch.tensor([0.5, -1.0])
BAD_CALLS = {
    "scale-zero": (lambda: quantize(X, 0.0, 0, INT8), ValueError, r"scale must be positive and finite everywhere, got 0.0"),
    "scale-negative": (lambda: quantize(X, torch.tensor([0.1, -0.1]), 0, INT8), ValueError, r"positive and finite.*got -0.1"),
    "scale-nan": (lambda: fake_quantize(X, math.nan, 0, INT8), ValueError, r"scale must be positive and finite.*nan"),
    "scale-inf": (lambda: dequantize(torch.tensor([1]), math.inf, 0), ValueError, r"scale must be positive and finite.*inf"),
    "scale-int-tensor": (lambda: quantize(X, torch.tensor(1), 0, INT8), TypeError, r"scale must be a float tensor.*int64.*scale.float"),
    "scale-str": (lambda: quantize(X, "0.1", 0, INT8), TypeError, r"scale must be a float"),
    "scale-shape": (lambda: quantize(X, torch.ones(3), 0, INT8), ValueError, r"scale has shape \(3,\).*does not broadcast.*\(2,\)"),
    "scale-grows-x": (lambda: quantize(X, torch.ones(2, 2), 0, INT8), ValueError, r"scale has shape \(2, 2\).*does not broadcast"),
    "zp-range": (lambda: quantize(X, 0.1, 128, INT8), ValueError, r"zero_point must lie in \[qmin, qmax\] = \[-128, 127\] for int8, got 128"),
    "zp-range-uint4": (lambda: quantize(X, 0.1, torch.tensor([1, -1]), UINT4), ValueError, r"\[0, 15\] for uint4, got -1"),
    "zp-float": (lambda: quantize(X, 0.1, 1.5, INT8), TypeError, r"zero_point must be an integer.*got 1.5.*torch.round"),
    "zp-float-tensor": (lambda: quantize(X, 0.1, torch.tensor(2.0), INT8), TypeError, r"zero_point must be an integer"),
    "zp-shape": (lambda: quantize(X, 0.1, torch.zeros(3, dtype=torch.int32), INT8), ValueError, r"zero_point has shape \(3,\)"),
    "x-nan": (lambda: quantize(torch.tensor([1.0, math.nan]), 0.1, 0, INT8), ValueError, r"x contains 1 NaN and 0 inf.*silently.*nan_to_num"),
    "x-inf": (lambda: choose_qparams(torch.tensor([math.inf]), INT8), ValueError, r"x contains 0 NaN and 1 inf"),
    "x-empty": (lambda: quantize(torch.zeros(0), 0.1, 0, INT8), ValueError, r"x is empty \(shape \(0,\)\)"),
    "x-empty-choose": (lambda: choose_qparams(torch.zeros(2, 0), INT8), ValueError, r"x is empty"),
    "x-bool": (lambda: quantize(torch.tensor([True]), 0.1, 0, INT8), TypeError, r"x must hold real numbers, got dtype torch.bool"),
    "x-complex": (lambda: fake_quantize(torch.tensor([1j]), 0.1, 0, INT8), TypeError, r"x must hold real numbers"),
    "x-str": (lambda: quantize("x", 0.1, 0, INT8), TypeError, r"x must be a torch.Tensor, numpy array or number"),
    "fmt-str": (lambda: quantize(X, 0.1, 0, "int8"), TypeError, r"fmt must be an IntFormat such as qedu.formats.INT8.*got str"),
    "fmt-choose": (lambda: choose_qparams(X, torch.int8), TypeError, r"fmt must be an IntFormat"),
    "rounding": (lambda: quantize(X, 0.1, 0, INT8, "nearest"), ValueError,
                 r"rounding='nearest' is not one of 'half_even', 'half_away', 'floor', 'stochastic'"),
    "generator": (lambda: quantize(X, 0.1, 0, INT8, "stochastic", 0), TypeError, r"generator must be a torch.Generator"),
    "q-float": (lambda: dequantize(X, 0.1, 0), TypeError, r"q must be a tensor of integer codes, got dtype torch.float32; did you pass x"),
    "q-list": (lambda: dequantize([1, 2], 0.1, 0), TypeError, r"q must be a tensor of integer codes, got list"),
    "granularity": (lambda: choose_qparams(X, INT8, "per_tensor"), TypeError, r"granularity must be PerTensor\(\)"),
    "symmetric-rule": (lambda: choose_qparams(X, INT8, symmetric_rule="max"), ValueError, r"symmetric_rule='max' is not one of 'half_range', 'no_clip'"),
    "no-clip-1bit": (lambda: choose_qparams(X, BINARY, symmetric_rule="no_clip"), ValueError, r"no code on one side.*at least 2 bits"),
    "symmetric-type": (lambda: choose_qparams(X, INT8, symmetric="yes"), TypeError, r"symmetric must be True or False"),
    "eps": (lambda: choose_qparams(X, INT8, eps=0.0), ValueError, r"eps must be a positive finite float, got 0.0"),
    "min-gt-max": (lambda: choose_qparams_from_minmax(2.0, 1.0, INT8), ValueError, r"min_val is larger than max_val"),
    "minmax-shapes": (lambda: choose_qparams_from_minmax(torch.zeros(2), torch.ones(3), INT8), ValueError, r"same shape"),
    "error-shapes": (lambda: quantization_error(X, X[:1]), ValueError, r"x and x_hat must have the same shape, got \(2,\) and \(1,\)"),
}


@pytest.mark.parametrize("call, exc, match", list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_are_not_mutated_and_float64_is_rounded_to_float32():
    x = torch.tensor([0.123456789, -2.5], dtype=torch.float64)
    before = x.clone()
    x_hat = fake_quantize(x, 0.01, 0, INT8)
    assert torch.equal(x, before) and x_hat.dtype == torch.float32
    assert torch.equal(x_hat, fake_quantize(x.float(), 0.01, 0, INT8))


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
# Values that passed the old checks but broke in float32, and arguments that failed deep inside.
BIG64 = torch.tensor([1.0, 1e39], dtype=torch.float64)  # finite in float64, inf in float32
ISSUE20_BAD = {
    "scale-1/scale-inf": (lambda: quantize([0.0, 1.0], 1e-40, 0, INT8), ValueError, r"scale=1e-40 is so small that 1 / scale overflows float32"),
    "fake-scale-1/scale-inf": (lambda: fake_quantize([0.0, 1.0], 1e-40, 0, INT8), ValueError, r"1 / scale overflows"),
    "dequantize-overflow": (lambda: dequantize(torch.tensor([127]), 3e38, 0), ValueError, r"scale \* \(q - zero_point\) overflows float32"),
    "fake-grid-overflow": (lambda: fake_quantize([1.0], 3e38, 0, INT8), ValueError, r"scale=3e\+38 is too large for int8"),
    "eps-underflows": (lambda: choose_qparams(torch.zeros(4), INT8, symmetric=False, eps=1e-50), ValueError, r"eps=1e-50 is 0 in float32"),
    "eps-overflows": (lambda: choose_qparams(torch.zeros(4), INT8, symmetric=False, eps=1e39), ValueError, r"eps=1e\+39 is inf in float32"),
    "eps-subnormal": (lambda: choose_qparams(torch.zeros(4), INT8, eps=1e-40), ValueError, r"eps=1e-40.*outside"),
    "range-overflows": (lambda: choose_qparams([-3e38, 3e38], INT8, symmetric=False), ValueError, r"range max_val - min_val overflows float32"),
    "symmetric-grid-overflows": (lambda: choose_qparams([-3.4e38, 3.4e38], INT8), ValueError, r"too close to float32's limit"),
    "symmetric-1bit-unsigned": (lambda: choose_qparams([1.0, 2.0], BINARY), ValueError, r"symmetric grid needs at least 2 bits"),
    "symmetric-1bit-signed": (lambda: choose_qparams_from_minmax(-1.0, 1.0, IntFormat(1)), ValueError, r"symmetric grid needs at least 2 bits"),
    "x-float64-beyond-float32": (lambda: quantize(BIG64, 0.1, 0, INT8), ValueError, r"x holds 1 finite value\(s\) beyond float32's range"),
    "choose-float64-beyond-float32": (lambda: choose_qparams(BIG64, INT8), ValueError, r"x holds 1 finite value"),
    "max_val-float64": (lambda: choose_qparams_from_minmax(0.0, BIG64[1], INT8), ValueError, r"max_val holds 1 finite value"),
    "x-meta": (lambda: quantize(torch.empty(3, device="meta"), 0.1, 0, INT8), ValueError, r"x is a meta tensor"),
    "round-codes-str": (lambda: round_codes("2.5"), TypeError, r"v must be a torch.Tensor, numpy array or number"),
    "round-codes-bool": (lambda: round_codes(torch.tensor([True])), TypeError, r"v must hold real numbers"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_extreme_but_valid_scales_still_work():
    """The new limits are the float32 ones, not tighter: the smallest scale with a finite 1 / scale
    and float32 data near its maximum (affine halves of the range) still quantize exactly."""
    tiny = float(torch.finfo(torch.float32).tiny)
    assert torch.equal(quantize([0.0, tiny], tiny, 0, INT8), torch.tensor([0, 1], dtype=torch.int32))
    scale, zero_point = choose_qparams([-1e38, 1e38], INT8, symmetric=False)
    assert bool(torch.isfinite(fake_quantize([-1e38, 0.0, 1e38], scale, zero_point, INT8)).all())
    assert choose_qparams(torch.zeros(3), INT8, eps=tiny)[0].item() == tiny


def test_issue20_round_codes_accepts_lists_and_numbers():
    assert round_codes([2.5, -2.5], "half_away").tolist() == [3.0, -3.0]
    assert round_codes(2.5).item() == 2.0
    assert round_codes(torch.tensor([3, -2])).tolist() == [3.0, -2.0]  # integer codes become float32
