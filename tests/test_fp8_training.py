"""qedu.fp8_training: the recipes' formulas, and torchao 0.18's Float8Linear on the CPU as the reference."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from qedu.floats import FP8_E4M3, FP8_E5M2, cast
from qedu.fp8_training import (RECIPES, ROLES, FP8Stats, Float8Linear, amax_to_scale, convert_to_float8, fp8_matmul,
                               overflowed, underflowed)
from qedu.mx import mx_dequantize, mx_quantize


def _data(seed=0, m=64, k=96, n=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-4, 5, (m, 1), generator=g).float())  # uneven rows
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(n, generator=g))
    return x, lin


def test_amax_to_scale_equals_torchaos():
    utils = pytest.importorskip("torchao.float8.float8_utils", reason="torchao (the `ref` extra) is the reference")
    amax = torch.cat([torch.rand(1000) * 10.0 ** torch.randint(-20, 20, (1000,)).float(), torch.tensor([0.0, 1e-30, 3e38])])
    for fmt, dtype in ((FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)):
        for p2 in (False, True):
            assert torch.equal(amax_to_scale(amax, fmt, p2), utils.amax_to_scale(amax, dtype, round_scales_to_power_of_2=p2))


def test_tensorwise_matmul_is_the_scaled_cast_formula():
    x, lin = _data()
    a, b = x, lin.weight.t()
    s_a = FP8_E4M3.max / a.abs().max()
    s_b = FP8_E4M3.max / b.abs().max()
    expected = (cast(a * s_a, FP8_E4M3) @ cast(b * s_b, FP8_E4M3)) / (s_a * s_b)
    assert torch.allclose(fp8_matmul(a, b, FP8_E4M3, FP8_E4M3), expected, rtol=1e-6, atol=0)


def test_rowwise_scales_each_row_of_the_contraction():
    x, lin = _data()
    x[3] *= 1e4  # one outlier row: tensorwise squashes the others, rowwise does not
    exact = x @ lin.weight.t()
    errs = {r: ((fp8_matmul(x, lin.weight.t(), FP8_E4M3, FP8_E4M3, r) - exact).norm(dim=1) / exact.norm(dim=1)).median()
            for r in ("tensorwise", "rowwise")}
    assert errs["rowwise"] < errs["tensorwise"] / 3


def test_mxfp8_matmul_is_the_product_of_the_mx_dequantized_operands():
    x, lin = _data()
    expected = mx_dequantize(mx_quantize(x, "fp8_e4m3")) @ mx_dequantize(mx_quantize(lin.weight, "fp8_e4m3")).t()
    assert torch.equal(fp8_matmul(x, lin.weight.t(), FP8_E4M3, FP8_E4M3, "mxfp8"), expected)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_linear_matches_torchao_forward_and_backward(recipe):
    ao = pytest.importorskip("torchao.float8", reason="torchao (the `ref` extra) is the reference for the FP8 recipes")
    x, lin = _data(seed=1)
    ref = ao.convert_to_float8_training(nn.Sequential(copy.deepcopy(lin)), config=ao.Float8LinearConfig.from_recipe_name(recipe))
    ours = Float8Linear(lin, recipe)
    g = torch.randn(64, 48, generator=torch.Generator().manual_seed(2)) * 1e-3
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    (y_ref * g).sum().backward()
    (y_ours * g).sum().backward()
    # same fp8 operands and scales; only the order of the fp32 sums differs, and torchao's rowwise
    # matmuls round their results to bf16 on the CPU
    tol = 4e-3 if recipe == "rowwise" else 1e-5  # bf16 keeps 8 bits: relative rounding up to 2^-9
    for name, a, b in (("output", y_ours, y_ref), ("grad_input", x_ours.grad, x_ref.grad),
                       ("grad_weight", ours.weight.grad, ref[0].weight.grad), ("grad_bias", ours.bias.grad, ref[0].bias.grad)):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < tol, f"{recipe} {name}: relative difference {rel:.2e}"


def test_rowwise_operands_equal_torchaos_casts_and_the_product_its_scaled_mm():
    """Stage by stage: the same fp8 bytes and power-of-two scales as torchao's rowwise casts, and the
    product equal to torch._scaled_mm with an fp32 output."""
    pytest.importorskip("torchao.float8", reason="torchao (the `ref` extra) is the reference for the FP8 recipes")
    from torchao.float8.config import ScalingGranularity
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole, LinearMMConfig

    x, lin = _data(seed=3)
    w_t = lin.weight.detach().t()
    casts = [hp_tensor_to_float8_dynamic(t, torch.float8_e4m3fn, LinearMMConfig(), gemm_input_role=role,
                                         scaling_granularity=ScalingGranularity.AXISWISE, axiswise_dim=dim,
                                         round_scales_to_power_of_2=True)
             for t, role, dim in ((x, GemmInputRole.INPUT, -1), (w_t, GemmInputRole.WEIGHT, 0))]
    s_x = amax_to_scale(x.abs().amax(dim=1, keepdim=True), FP8_E4M3, True)
    s_w = amax_to_scale(w_t.abs().amax(dim=0, keepdim=True), FP8_E4M3, True)
    assert torch.equal(s_x, casts[0]._scale) and torch.equal(s_w, casts[1]._scale)
    assert torch.equal(cast(x * s_x, FP8_E4M3), casts[0]._data.float())
    assert torch.equal(cast(w_t * s_w, FP8_E4M3), casts[1]._data.float())
    reference = torch._scaled_mm(casts[0]._data, casts[1]._data, scale_a=1 / s_x, scale_b=1 / s_w, out_dtype=torch.float32)
    ours = fp8_matmul(x, w_t, FP8_E4M3, FP8_E4M3, "rowwise")
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-6


def test_delayed_scaling_saturates_on_a_spike_until_the_history_catches_up():
    x, lin = _data()
    layer = Float8Linear(lin, "delayed", history_len=4)
    for _ in range(3):
        layer(x)
    assert layer.stats.overflow["input"] == 0
    layer(x * 1e3)  # a spike: the scale comes from the earlier, smaller amax
    assert layer.stats.overflow["input"] > 0
    before = layer.stats.overflow["input"]
    layer(x * 1e3)  # the history now holds the spike
    assert layer.stats.overflow["input"] == before


def test_hybrid_recipe_uses_e5m2_for_gradients_and_counts_underflow():
    x, lin = _data()
    for recipe, grad_fmt in (("tensorwise", FP8_E5M2), ("rowwise", FP8_E4M3), ("delayed", FP8_E5M2)):
        layer = Float8Linear(lin, recipe)
        assert layer.formats == (FP8_E4M3, grad_fmt)
        y = layer(x.requires_grad_())
        y.backward(torch.full_like(y, 1e-3))
        assert set(layer.stats.count) == set(ROLES) and all(layer.stats.count[r] > 0 for r in ROLES)


def test_convert_copies_and_leaves_the_callers_model_alone():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_to_float8(model, "tensorwise", skip=("2",))
    assert isinstance(converted[0], Float8Linear) and isinstance(converted[2], nn.Linear)
    assert isinstance(model[0], nn.Linear)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(convert_to_float8(nn.Linear(4, 4)), Float8Linear)
    with pytest.raises(ValueError, match="recipe"):
        convert_to_float8(model, "fp8")
    with pytest.raises(ValueError, match="no nn.Linear"):
        convert_to_float8(nn.ReLU())
    with pytest.raises(TypeError, match="model"):
        convert_to_float8("model")


def _fit(layer: nn.Module, x, target, steps=60) -> float:
    opt = torch.optim.Adam(layer.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    return loss.item()


def test_every_recipe_trains_a_small_layer_like_fp32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    target = x @ (torch.randn(32, 32, generator=g) / 6)
    torch.manual_seed(0)
    base = nn.Linear(32, 32)
    start = ((base(x) - target) ** 2).mean().item()
    fp32 = _fit(copy.deepcopy(base), x, target)
    assert fp32 < 0.3 * start
    for recipe in RECIPES:  # mxfp8 needs every contraction (32 features, 64 rows) a multiple of 32
        final = _fit(Float8Linear(base, recipe), x, target)
        assert final < 1.1 * fp32 + 0.01 * start, f"{recipe}: loss {final:.4f} against fp32's {fp32:.4f}"


def test_unscaled_recipe_is_a_plain_saturating_cast_and_underflows_small_gradients():
    """issue 18: the "unscaled" baseline casts without a scale: products of exactly representable
    operands are exact, values past e4m3's 448 saturate, and tiny gradients become 0."""
    from qedu.floats import FP8_E4M3, cast
    from qedu.fp8_training import FP8Stats

    a = torch.tensor([[1.0, 2.0], [1000.0, 1e-6]])
    b = torch.tensor([[2.0], [4.0]])
    stats = FP8Stats()
    out = fp8_matmul(a, b, FP8_E4M3, FP8_E4M3, "unscaled", roles=("input", "weight"), stats=stats)
    expected = cast(a.clamp(-448, 448), FP8_E4M3) @ b
    assert torch.equal(out, expected) and out[0, 0] == 10.0 and out[1, 0] == 448.0 * 2
    assert stats.overflow["input"] == 1 and stats.underflow["input"] == 1  # 1000 -> 448; 1e-6 -> 0
    layer = Float8Linear(torch.nn.Linear(8, 4), "unscaled")
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    (layer(x).sum() * 1e-9).backward()  # gradients ~1e-9, far below e5m2's smallest subnormal 1.5e-5
    assert layer.stats.underflow["grad_output"] == layer.stats.count["grad_output"] == 64
    assert torch.count_nonzero(layer.weight.grad) == 0
    scaled = Float8Linear(torch.nn.Linear(8, 4), "tensorwise")
    (scaled(x).sum() * 1e-9).backward()
    assert torch.count_nonzero(scaled.weight.grad) == 32  # with a scale, the same gradients survive


# --- what counts as an overflow or an underflow: exactly what the cast does ----------------------

def _up(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(math.inf)).item()


def _down(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(-math.inf)).item()


# (format, torch dtype, value, overflows?) at the top of each format: the float32 values around the max,
# around the midpoint to the next (missing) value, and beyond
BOUNDARIES = [
    (FP8_E4M3, 448.0, False), (FP8_E4M3, _up(448.0), False),   # 1 ulp above the max rounds to it
    (FP8_E4M3, _down(464.0), False), (FP8_E4M3, 464.0, False),  # the midpoint ties to 448 (even mantissa 110)
    (FP8_E4M3, _up(464.0), True), (FP8_E4M3, 480.0, True), (FP8_E4M3, math.inf, True),
    (FP8_E5M2, 57344.0, False), (FP8_E5M2, _up(57344.0), False),
    (FP8_E5M2, _down(61440.0), False), (FP8_E5M2, 61440.0, True),  # this tie goes to the even 2^16: inf
    (FP8_E5M2, _up(61440.0), True), (FP8_E5M2, math.inf, True),
]


@pytest.mark.parametrize("fmt, value, expected", BOUNDARIES,
                         ids=[f"{f.name}-{v!r}" for f, v, _ in BOUNDARIES])
def test_overflow_is_rounding_past_the_max_as_the_cast_does_it(fmt, value, expected):
    x = torch.tensor([value, -value])
    assert overflowed(x, fmt).tolist() == [expected, expected]
    dtype = {FP8_E4M3: torch.float8_e4m3fn, FP8_E5M2: torch.float8_e5m2}[fmt]
    by_torch = x.to(dtype).float()
    if fmt is FP8_E5M2:  # torch's e5m2 cast makes inf exactly where the value overflows
        assert torch.isinf(by_torch).tolist() == [expected, expected]
    else:  # torch 2.13 saturates e4m3fn (2.11 gave NaN): where not an overflow, it is plain rounding
        assert (torch.isnan(by_torch) | (by_torch.abs() == 448)).all()
        if not expected:
            assert torch.equal(by_torch, cast(x, fmt, saturate=False))
    assert torch.isfinite(cast(x, fmt, saturate=False)).tolist() == [not expected, not expected]


def test_overflow_equals_the_plain_casts_nonfinite_values_near_every_boundary():
    g = torch.Generator().manual_seed(0)
    for fmt, dtype in ((FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)):
        mid = fmt.max * (1 + 2.0 ** -(fmt.man_bits + 1) / 1.75)  # halfway from max to the next power-of-two step
        x = torch.cat([torch.linspace(fmt.max * 0.99, fmt.max * 1.2, 100_001), mid + torch.arange(-64, 65) * mid * 2.0**-24,
                       torch.randn(10_000, generator=g) * fmt.max, torch.tensor([math.nan, 0.0])])
        x = torch.cat([x, -x])
        expected = ~torch.isnan(x) & ~torch.isfinite(cast(x, fmt, saturate=False))
        assert torch.equal(overflowed(x, fmt), expected)
        if fmt is FP8_E5M2:
            assert torch.equal(overflowed(x, fmt), torch.isinf(x.to(dtype).float()))
        assert 0 < int(expected.sum()) < x.numel()


UNDERFLOWS = [(FP8_E4M3, 2.0**-10, True), (FP8_E4M3, _up(2.0**-10), False), (FP8_E4M3, 2.0**-9, False),
              (FP8_E4M3, 1e-30, True), (FP8_E4M3, 0.0, False),
              (FP8_E5M2, 2.0**-17, True), (FP8_E5M2, _up(2.0**-17), False), (FP8_E5M2, 2.0**-16, False)]


@pytest.mark.parametrize("fmt, value, expected", UNDERFLOWS, ids=[f"{f.name}-{v!r}" for f, v, _ in UNDERFLOWS])
def test_underflow_is_a_nonzero_that_the_cast_makes_zero(fmt, value, expected):
    dtype = {FP8_E4M3: torch.float8_e4m3fn, FP8_E5M2: torch.float8_e5m2}[fmt]
    x = torch.tensor([value, -value])
    assert underflowed(x, cast(x, fmt)).tolist() == [expected, expected]
    assert underflowed(x, x.to(dtype).float()).tolist() == [expected, expected]


def test_fp8stats_counts_at_the_boundaries_of_an_unscaled_cast():
    stats = FP8Stats()
    a = torch.tensor([[448.0, _up(448.0), 464.0, _up(464.0)], [-1e4, 2.0**-10, _up(2.0**-10), 0.0]])
    fp8_matmul(a, torch.ones(4, 1), FP8_E4M3, FP8_E4M3, "unscaled", roles=("input", "weight"), stats=stats)
    assert (stats.count["input"], stats.overflow["input"], stats.underflow["input"]) == (8, 2, 1)
    assert (stats.overflow["weight"], stats.underflow["weight"]) == (0, 0)


def test_tensorwise_scaling_never_overflows_even_when_amax_times_scale_lands_above_448():
    """The reported bug: amax * (448 / amax) in float32 can be 448.00003, which the cast rounds to 448."""
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(400):
        x = torch.randn(4, 32, generator=g) * 10.0 ** float(torch.randint(-4, 5, (), generator=g))
        s = amax_to_scale(x.abs().max())
        hits += bool((x.abs().max() * s) > 448)
        stats = FP8Stats()
        fp8_matmul(x, torch.ones(32, 1), FP8_E4M3, FP8_E4M3, "tensorwise", roles=("input", "weight"), stats=stats)
        assert stats.overflow["input"] == 0
    assert hits > 5  # the case really happens (about 1 tensor in 20)


def test_delayed_counts_are_exact_integers_of_the_cast():
    x, lin = _data()
    layer = Float8Linear(lin, "delayed", history_len=2)
    layer(x)
    scale = layer.delayed["input"].scale
    spike = x * 3
    layer(spike)
    scaled = spike * scale
    assert layer.stats.overflow["input"] == int(overflowed(scaled, FP8_E4M3).sum()) > 0
    assert layer.stats.underflow["input"] == int(underflowed(spike, cast(scaled, FP8_E4M3, saturate=True)).sum()) \
        + int(underflowed(x, cast(x, FP8_E4M3, saturate=True)).sum())  # the first call used scale 1


def test_mxfp8_counts_elements_that_saturate_or_flush_after_their_blocks_scale():
    # one block of 32 per row; the spec's floor rule puts a block's max in [256, 512) times its scale, so a
    # max with mantissa above 1.8125 (> 464 X) saturates at 448 X; a tiny value beside a big one flushes to 0
    row0 = torch.full((32,), 1.0)
    row0[0] = 1.9  # 1.9 * 2^8 = 486.4 > 464: saturates
    row1 = torch.full((32,), 1.0)
    row1[0] = 1.8  # 460.8: rounds to 448, no overflow
    row1[1] = 2.0**-20  # 2^-20 * 2^8 = 2^-12, below e4m3's 2^-10: flushes
    row1[2] = 0.0  # zero stays zero: not an underflow
    a = torch.stack([row0, row1])
    stats = FP8Stats()
    out = fp8_matmul(a, torch.ones(32, 1), FP8_E4M3, FP8_E4M3, "mxfp8", roles=("input", "weight"), stats=stats)
    assert (stats.count["input"], stats.overflow["input"], stats.underflow["input"]) == (64, 1, 1)
    assert (stats.count["weight"], stats.overflow["weight"], stats.underflow["weight"]) == (32, 0, 0)
    assert out[0, 0] == 31 + 1.75  # 1.9 became 448 / 256
    # the counts are the per-element rule applied with each block's scale, on random data too
    x, lin = _data(seed=4, n=64)  # every contraction (96, 64 rows, 64 outputs) a multiple of 32
    layer = Float8Linear(lin, "mxfp8")
    y = layer(x.requires_grad_())
    y.backward(torch.randn_like(y) * 1e-3)
    mx = mx_quantize(x, "fp8_e4m3", 32)
    scale = torch.exp2(mx.scale_code.float() - 127).repeat_interleave(32, dim=-1)
    assert layer.stats.overflow["input"] == int(overflowed(x / scale, FP8_E4M3).sum()) > 0
    assert layer.stats.underflow["input"] == int(((x != 0) & (mx.elements == 0)).sum())
    assert all(layer.stats.count[r] > 0 for r in ROLES)
