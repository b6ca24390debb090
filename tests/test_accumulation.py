"""qedu.accumulation: sums and dot products in a low-precision accumulator, Kahan summation."""
from __future__ import annotations

import pytest
import torch

from qedu.accumulation import dot, kahan_add, kahan_sum, relative_error, sequential_sum, summation_errors
from qedu.floats import BF16, FP8_E4M3, FP16, FP32, cast
from qedu.rounding import swamping


def _sum_with_cast(x: torch.Tensor, fmt) -> torch.Tensor:
    """The definition, with qedu's own rounding: total = cast(float32 total + x_i, fmt)."""
    total = torch.zeros(x.shape[:-1])
    for i in range(x.shape[-1]):
        total = cast(total + x[..., i], fmt)
    return total


@pytest.mark.parametrize("fmt", [FP16, BF16], ids=lambda f: f.name)
def test_sequential_sum_is_cast_after_every_addition(fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 300, generator=g) * torch.logspace(-3, 2, 300)  # terms of many sizes, both signs
    assert torch.equal(sequential_sum(x, fmt), _sum_with_cast(x, fmt))


@pytest.mark.parametrize("fmt,dtype", [(FP16, torch.float16), (BF16, torch.bfloat16), (FP32, torch.float32)],
                         ids=["fp16", "bf16", "fp32"])
def test_sequential_sum_equals_torch_adding_in_that_dtype(fmt, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 500, generator=g).to(dtype)
    total = torch.zeros(4, dtype=dtype)
    for i in range(500):
        total = total + x[:, i]  # torch's own fp16/bf16 addition
    assert torch.equal(sequential_sum(x.float(), fmt), total.float())


def test_swamping_is_the_same_sum():
    terms = torch.cat([torch.ones(1), torch.full((10_000,), float(cast(1e-3, BF16)))])
    assert sequential_sum(terms, BF16).item() == swamping(BF16).item() == 1.0
    terms16 = torch.cat([torch.ones(1), torch.full((10_000,), float(cast(1e-3, FP16)))])
    assert sequential_sum(terms16, FP16).item() == swamping(FP16).item() == 4.0


def test_ones_stop_at_the_first_integer_the_format_cannot_hold():
    # bf16 has 8 significant bits: 256 + 1 = 257 needs 9, rounds to even 256; fp16 has 11: 2048
    assert sequential_sum(torch.ones(1000), BF16).item() == 256.0
    assert sequential_sum(torch.ones(5000), FP16).item() == 2048.0
    assert sequential_sum(torch.ones(5000), FP32).item() == 5000.0
    assert kahan_sum(torch.ones(1000), BF16).item() == 1000.0  # 1000 is a bf16 number (0b1111101000)


def test_kahan_sum_stays_within_one_rounding_where_the_plain_sum_fails():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 4096, generator=g)
    exact = x.double().sum(-1)
    unit_roundoff = 2.0**-8  # bf16: 8 significant bits, half a step relative = 2^-8 at most
    assert relative_error(kahan_sum(x, BF16), exact).max() <= unit_roundoff
    assert relative_error(sequential_sum(x, BF16), exact).min() > 0.5  # the plain bf16 sum stalls
    assert relative_error(kahan_sum(x, FP32), exact).max() < 1e-7


def test_kahan_sum_of_exact_terms_in_fp32_matches_float64():
    x = torch.tensor([[1.0, 2.0**-24, 2.0**-24, 2.0**-24, 2.0**-24]])  # each term alone is swamped
    assert sequential_sum(x, FP32).item() == 1.0
    assert kahan_sum(x, FP32).item() == 1.0 + 2.0**-22


def test_dot_products_are_exact_in_fp32_and_rounded_in_fp16():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[4.0, 5.0, 6.0]])
    assert dot(a, b, FP16, FP32).item() == 32.0
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 256, generator=g), torch.randn(4, 256, generator=g)
    products = a.to(torch.bfloat16).double() * b.to(torch.bfloat16).double()
    assert torch.equal((a.to(torch.bfloat16).float() * b.to(torch.bfloat16).float()).double(), products)  # exact
    assert torch.equal(dot(a, b, BF16, FP16), sequential_sum(products.float(), FP16))
    err32 = (dot(a, b, BF16, FP32).double() - products.sum(-1)).abs().max()
    err16 = (dot(a, b, BF16, FP16).double() - products.sum(-1)).abs().max()
    assert err16 > 100 * err32


def test_kahan_add_keeps_small_weight_updates_that_rounding_drops():
    w, c = torch.ones(1), torch.zeros(1)
    plain = torch.ones(1)
    update = torch.full((1,), 1e-3)
    for _ in range(10_000):
        w, c = kahan_add(w, c, update, BF16)
        plain = cast(plain + update, BF16)
    assert plain.item() == 1.0  # swamped
    assert abs(w.item() - 11.0) <= 2.0**-4  # within one bf16 step (2^-4 between 8 and 16) of the true 11
    assert torch.equal(w, cast(w, BF16)) and torch.equal(c, cast(c, BF16))  # both stored in bf16
    # c is bf16 too, so its own roundings drift a little: w + c is off by about one step of w, not 10
    assert abs(w.item() + c.item() - 11.0) < 0.1


def test_kahan_add_does_not_mutate_its_inputs():
    w, c, u = torch.ones(3), torch.zeros(3), torch.full((3,), 1e-3)
    kahan_add(w, c, u, BF16)
    assert torch.equal(w, torch.ones(3)) and torch.equal(c, torch.zeros(3))


@pytest.mark.parametrize("call,error,match", [
    (lambda: sequential_sum(torch.ones(3), "fp16"), TypeError, "fmt must be a FloatFormat"),
    (lambda: sequential_sum(torch.ones(3), FP8_E4M3), ValueError, "16- or 32-bit"),
    (lambda: sequential_sum(torch.tensor(1.0), FP16), ValueError, "at least one dimension"),
    (lambda: dot(torch.ones(3), torch.ones(4)), ValueError, "same shape"),
    (lambda: kahan_add(torch.ones(2), torch.zeros(3), torch.ones(2)), ValueError, "same shape"),
    (lambda: kahan_add([1.0], torch.zeros(1), torch.ones(1)), TypeError, "w must be a torch.Tensor"),
    (lambda: relative_error(torch.ones(2), torch.tensor([1.0, 0.0])), ValueError, "nonzero"),
    (lambda: summation_errors(lengths=(0,)), ValueError, "lengths"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_summation_errors_table_and_lesson06_claims():
    # lesson 06 runs summation_errors() with these defaults and states what the asserts below hold
    table = summation_errors()
    by = {(r["n"], r["method"]): r["mean_relative_error"] for r in table}
    assert {n for n, _ in by} == {256, 1024, 4096, 16384}
    for n in (256, 1024, 4096, 16384):
        assert by[(n, "fp32")] < 1e-5  # "fp32 is within 1e-5 at every length"
        assert by[(n, "bf16, Kahan")] < 2.0**-8  # "Kahan: a bf16 sum within one bf16 rounding (under 0.4 %)"
    assert 0.7 < by[(16384, "fp16")] < 0.8  # "fp16 stalls at 2,048: at n = 16,384 three quarters are missing"
    assert 0.4 < by[(1024, "bf16")] < 0.6  # "bf16 stalls at 256: at n = 1,024 about half of the sum is missing"
    assert all(by[(n, "fp16")] < by[(n, "bf16")] for n in (256, 1024, 4096, 16384))


def test_lesson06_dot_product_claims():
    # lesson 06's cell, same seed: "about 2e-3 of the products' scale in bf16, under 1e-4 in fp16, 1e-8 in fp32"
    a, b = torch.randn(2, 4, 4096, generator=torch.Generator().manual_seed(0))
    scale = (a.bfloat16().float() * b.bfloat16().float()).abs().sum(-1)
    exact = (a.bfloat16().double() * b.bfloat16().double()).sum(-1)
    err = {acc.name: float(((dot(a, b, inputs=BF16, accumulate=acc).double() - exact).abs() / scale).mean())
           for acc in (FP32, FP16, BF16)}
    assert 1e-3 <= err["bf16"] < 3e-3
    assert 1e-5 < err["fp16"] < 1e-4
    assert 3e-9 < err["fp32"] < 3e-8
