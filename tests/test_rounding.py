"""qedu.rounding: stochastic rounding is unbiased and lands on a neighbour; swamping is reproduced."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.floats import BF16, FP4_E2M1, FP8_E4M3, FP8_E5M2, FP16, FP32, cast, grid
from qedu.rounding import stochastic_round, swamping


def _neighbours(x: torch.Tensor, fmt):
    """(lo, hi): the values of ``fmt`` just below-or-at and just above-or-at |x|, from the grid."""
    g = grid(fmt).double()
    g = g[g >= 0]
    a = x.double().abs()
    i = torch.searchsorted(g, a, right=True) - 1  # g[i] <= a
    lo = g[i]
    hi = g[(i + 1).clamp(max=len(g) - 1)]
    hi = torch.where(lo == a, lo, hi)
    return lo, hi


FORMATS = [BF16, FP16, FP8_E4M3, FP8_E5M2, FP4_E2M1]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_result_is_always_one_of_the_two_neighbours(fmt):
    g = torch.Generator().manual_seed(1)
    # magnitudes spread over the format's whole range, subnormals included, both signs
    exps = torch.empty(20000).uniform_(math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max), generator=g)
    x = (torch.exp2(exps) * torch.where(torch.rand(20000, generator=g) < 0.5, -1.0, 1.0)).float()
    y = stochastic_round(x, fmt, g)
    lo, hi = _neighbours(x, fmt)
    mag = y.double().abs()
    assert bool(((mag == lo) | (mag == hi)).all())
    assert bool((torch.sign(y) * torch.sign(x) >= 0).all())
    assert torch.equal(stochastic_round(grid(fmt), fmt, g), grid(fmt))  # values of fmt are fixed points


@pytest.mark.parametrize("fmt, x", [
    (BF16, 1.0 + 2**-9),           # a quarter of the way from 1 to the next bf16 value
    (BF16, -3.3),
    (FP16, 1e-3),
    (FP16, 3e-6),                  # subnormal region of fp16
    (FP8_E4M3, 0.3),
    (FP8_E4M3, 0.0033),            # e4m3 subnormals (step 2**-9)
    (FP4_E2M1, 2.6),
], ids=str)
def test_unbiased_binomial_z_test(fmt, x):
    """The round-up frequency is (|x| - lo) / (hi - lo): a two-sided z-test at |z| < 4.5."""
    n = 40000
    xs = torch.full((n,), x)
    y = stochastic_round(xs, fmt, torch.Generator().manual_seed(123))
    lo, hi = (float(v[0]) for v in _neighbours(xs[:1], fmt))
    p = (abs(float(xs[0])) - lo) / (hi - lo)
    assert 0 < p < 1
    k = int((y.double().abs() == hi).sum())
    z = (k - n * p) / math.sqrt(n * p * (1 - p))
    assert abs(z) < 4.5, f"round-up frequency {k / n:.4f}, expected {p:.4f} (z = {z:.2f})"
    assert float(y.double().mean()) == pytest.approx(float(xs[0]), abs=5 * (hi - lo) / math.sqrt(n))


def test_special_values_follow_cast():
    x = torch.tensor([math.inf, -math.inf, math.nan, 1e6, -1e6, 0.0, -0.0, 65519.0])
    for fmt in (FP16, FP8_E4M3, FP8_E5M2, FP4_E2M1):
        y = stochastic_round(x, fmt, torch.Generator().manual_seed(0))
        c = cast(x, fmt)
        assert torch.equal(y.isnan(), c.isnan())
        assert torch.equal(y.nan_to_num(), c.nan_to_num()) or fmt is FP16  # 65519 in fp16 is within max: SR
    y = stochastic_round(torch.tensor([-0.0]), BF16)
    assert y.item() == 0.0 and math.copysign(1.0, y.item()) == -1.0


def test_seeded_generator_repeats():
    x = torch.rand(1000)
    a = stochastic_round(x, BF16, torch.Generator().manual_seed(7))
    b = stochastic_round(x, BF16, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_float64_input_keeps_its_precision():
    x = torch.full((2**16,), 1.0 + 2**-30, dtype=torch.float64)  # float32 would make it exactly 1.0
    y = stochastic_round(x, FP32, torch.Generator().manual_seed(0))
    n_up = int((y == 1.0 + 2**-23).sum())  # p = 2**-30 / 2**-23 = 1/128: about 512 of 65536
    assert 400 < n_up < 630 and int((y == 1.0).sum()) == 2**16 - n_up


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32), st.integers(0, 2**31))
def test_property_bf16_neighbours(value, seed):
    x = torch.tensor([value])
    y = stochastic_round(x, BF16, torch.Generator().manual_seed(seed))
    lo, hi = _neighbours(x, BF16)
    assert abs(y.item()) in (lo.item(), hi.item())


def test_bad_arguments():
    with pytest.raises(TypeError, match="FloatFormat"):
        stochastic_round(torch.ones(2), "bf16")
    with pytest.raises(TypeError, match="Generator"):
        stochastic_round(torch.ones(2), BF16, generator=0)
    with pytest.raises(ValueError, match="rounding"):
        swamping(BF16, rounding="up")


# --- swamping: add 1e-3 to 1.0 ten thousand times -------------------------------------------

def _torch_loop(dtype, n=10_000, increment=1e-3, start=1.0):
    total = torch.tensor(start, dtype=dtype)
    inc = torch.tensor(increment, dtype=dtype)
    for _ in range(n):
        total = total + inc
    return total.float().item()


@pytest.mark.parametrize("fmt, dtype, expected", [(FP32, torch.float32, 11.0008), (BF16, torch.bfloat16, 1.0),
                                                   (FP16, torch.float16, 4.0)], ids=["fp32", "bf16", "fp16"])
def test_swamping_round_to_nearest_matches_torch_arithmetic(fmt, dtype, expected):
    ours = swamping(fmt).item()
    assert ours == _torch_loop(dtype)
    assert round(ours, 4) == expected


@pytest.mark.parametrize("fmt", [BF16, FP16, FP8_E5M2], ids=lambda f: f.name)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_swamping_fast_loop_equals_cast_and_stochastic_round(fmt, rounding):
    """The numpy loop inside swamping() gives the same numbers as cast()/stochastic_round()."""
    n, runs, inc, start = 150, 3, 0.0123, 1.9  # crosses the binade at 2
    ours = swamping(fmt, rounding, n, inc, start, runs, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    total = cast(torch.full((runs,), start), fmt).double()
    step = cast(inc, fmt).double()
    for _ in range(n):
        exact = total + step
        total = (cast(exact, fmt) if rounding == "nearest" else stochastic_round(exact, fmt, g)).double()
    assert torch.equal(ours, total.float())


def test_swamping_overflow_follows_the_format():
    assert swamping(FP16, n_steps=10, increment=30000.0, start=0.0).item() == math.inf
    assert swamping(FP8_E4M3, n_steps=10, increment=100.0, start=0.0).item() == 448.0  # e4m3fn saturates


def test_swamping_stochastic_rounding_is_right_on_average():
    """REFERENCE: bf16 SR gives 10.94 +- 0.63 over 200 runs; the exact expectation is 1 + 10^4 * bf16(1e-3)."""
    finals = swamping(BF16, "stochastic", n_runs=200, generator=torch.Generator().manual_seed(0)).double()
    expected = 1.0 + 10_000 * cast(1e-3, BF16).item()  # 10.9945...: SR is unbiased at every step
    sem = finals.std().item() / math.sqrt(200)
    assert abs(finals.mean().item() - expected) < 4 * sem
    assert 0.4 < finals.std().item() < 0.9


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
ISSUE20_BAD = {
    "swamping-increment-nan": (lambda: swamping(BF16, increment=math.nan), ValueError, r"increment must be a finite number"),
    "swamping-start-inf": (lambda: swamping(BF16, start=math.inf), ValueError, r"start must be a finite number"),
    "swamping-increment-str": (lambda: swamping(BF16, increment="0.001"), TypeError, r"increment must be a number"),
    "swamping-generator": (lambda: swamping(BF16, "stochastic", generator=0), TypeError, r"generator must be a torch.Generator"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
