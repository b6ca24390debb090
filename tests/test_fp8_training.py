"""qedu.fp8_training: the recipes' formulas, and torchao 0.18's Float8Linear on the CPU as the reference."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qedu.floats import FP8_E4M3, FP8_E5M2, cast
from qedu.fp8_training import RECIPES, ROLES, Float8Linear, amax_to_scale, convert_to_float8, fp8_matmul
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
