"""qedu.integer: TFLite's fixed-point requantization on hand cases, torch's int8 kernels bit for bit,
and an MLP that runs from input codes to output codes with integers only."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qedu.integer import (INT32_MAX, INT32_MIN, IntegerCNN, IntegerConv2d, IntegerLinear, IntegerMaxPool2d, IntegerMLP,
                          multiply_by_quantized_multiplier, power_of_two_multiplier, trace_dtypes,
                          quantize_multiplier, rounding_divide_by_pot, saturating_rounding_doubling_high_mul)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# ---------------------------------------------------------------- TFLite / gemmlowp, from their definitions
def test_quantize_multiplier_hand_cases():
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert quantize_multiplier(0.25) == (2**30, -1)
    assert quantize_multiplier(1.0) == (2**30, 1)
    assert quantize_multiplier(1 - 2**-40) == (2**30, 1)  # frac rounds up to 2^31: halve it, shift + 1
    assert quantize_multiplier(2.0**-30) == (2**30, -29)
    assert quantize_multiplier(2.0**-33) == (0, 0)  # shift -32: below what 31 bits of shift reach
    with pytest.raises(ValueError, match="real_multiplier"):
        quantize_multiplier(-0.5)
    with pytest.raises(ValueError, match="real_multiplier"):
        quantize_multiplier(math.nan)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e3, allow_nan=False))
def test_quantize_multiplier_represents_the_real_value(real):
    m0, shift = quantize_multiplier(real)
    assert 2**30 <= m0 < 2**31
    assert abs(m0 * 2.0 ** (shift - 31) - real) <= real * 2**-31  # half an ulp of a 31-bit mantissa


def test_srdhm_hand_cases():
    f = saturating_rounding_doubling_high_mul
    assert f(torch.tensor([INT32_MIN]), INT32_MIN).item() == INT32_MAX  # the one overflow
    assert f(torch.tensor([2**30]), 2**30).item() == 2**29  # exactly a / 2
    # ties go up: the nudge is 2^30 for a positive product and 1 - 2^30 for a negative one, then C
    # division truncates toward 0, so 1.5 -> 2 but -1.5 -> -1, 0.5 -> 1 but -0.5 -> 0
    assert f(torch.tensor([3, -3, 1, -1]), 2**30).tolist() == [2, -1, 1, 0]
    assert f(torch.tensor([5, -5]), 2**30).tolist() == [3, -2]


def test_rounding_divide_by_pot_rounds_half_away_from_zero():
    x = torch.tensor([4, 5, 6, 7, -4, -5, -6, -7, 0])
    assert rounding_divide_by_pot(x, 2).tolist() == [1, 1, 2, 2, -1, -1, -2, -2, 0]  # 5/4=1.25, 6/4=1.5 -> 2
    assert rounding_divide_by_pot(torch.tensor([1, -1, 3, -3]), 1).tolist() == [1, -1, 2, -2]
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(x, 32)
    with pytest.raises(TypeError, match="integer"):
        rounding_divide_by_pot(torch.tensor([1.5]), 1)


@settings(max_examples=150, deadline=None)
@given(st.integers(-(2**24), 2**24), st.floats(min_value=1e-6, max_value=0.999))
def test_both_roundings_are_within_one_of_the_exact_product(x, real):
    m0, shift = quantize_multiplier(real)
    exact = Fraction(x) * m0 / 2 ** (31 - shift)
    single = multiply_by_quantized_multiplier(torch.tensor([x]), m0, shift, "single").item()
    double = multiply_by_quantized_multiplier(torch.tensor([x]), m0, shift, "double").item()
    assert single == math.floor(exact + Fraction(1, 2))  # one rounding, ties toward +inf
    assert abs(double - exact) <= 1  # two roundings: at most one off
    assert abs(single - double) <= 1


def test_double_rounding_differs_from_single_on_a_known_case():
    # 5 * 0.25 = 1.25: SRDHM rounds 5 * 0.5 = 2.5 up to 3 first, then 3 / 2 = 1.5 rounds away to 2;
    # one rounding of the exact 1.25 gives 1
    m0, shift = 2**30, -1  # M = 0.25
    assert multiply_by_quantized_multiplier(torch.tensor([5]), m0, shift, "double").item() == 2
    assert multiply_by_quantized_multiplier(torch.tensor([5]), m0, shift, "single").item() == 1
    x = torch.tensor([6])  # 6 * 0.25 = 1.5: single rounds up to 2, double: SRDHM(6, 2^30) = 3, 3/2 -> 2
    assert multiply_by_quantized_multiplier(x, m0, shift, "single").item() == 2
    diffs = 0
    for x in range(-4000, 4000):
        a = multiply_by_quantized_multiplier(torch.tensor([x]), 1518500250, -3, "double").item()
        b = multiply_by_quantized_multiplier(torch.tensor([x]), 1518500250, -3, "single").item()
        diffs += a != b
    assert 0 < diffs < 800  # both kinds exist; they differ on a few percent of inputs (500 of 8000 here)


# ---------------------------------------------------------------- torch's int8 kernels, bit for bit
def _layer(seed=0, k=64, n=32):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    x = torch.rand(256, k, generator=torch.Generator().manual_seed(seed)) * 4 - 1
    with torch.no_grad():
        y = lin(x)
    s_y = float((y.max() - y.min()) / 255)
    return lin, x, (s_y, int(round(-float(y.min()) / s_y)))


def _torch_linear(engine, layer: IntegerLinear, q_x, x_qp, y_qp):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this torch build has no {engine} engine")
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine
    try:  # put the engine back: other tests in this process (tests/test_deploy.py) use the default one
        n_out = layer.q_w.shape[0]
        qw = torch._make_per_channel_quantized_tensor(layer.q_w, layer.s_w.double(),
                                                      torch.zeros(n_out, dtype=torch.int64), 0)
        packed = torch.ops.quantized.linear_prepack(qw, layer.bias)
        qx = torch._make_per_tensor_quantized_tensor(q_x, x_qp[0], x_qp[1])
        return torch.ops.quantized.linear(qx, packed, y_qp[0], y_qp[1]).int_repr()
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.parametrize("engine, rounding", [("x86", "float"), ("fbgemm", "float"), ("onednn", "float"),
                                              ("qnnpack", "float_int32_bias")])
def test_float_requantization_equals_torchs_kernels_with_7_bit_activations(engine, rounding):
    lin, x, y_qp = _layer()
    x_qp = (10 / 255, 25)  # activation codes 0..127 (reduce_range), as torch's x86 observers choose
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 127).to(torch.uint8)
    layer = IntegerLinear(lin, x_qp, y_qp, rounding=rounding)
    assert torch.equal(layer(q_x), _torch_linear(engine, layer, q_x, x_qp, y_qp))


@pytest.mark.parametrize("engine", ["x86", "fbgemm", "onednn"])
def test_full_range_activations_saturate_int16_pairs_on_x86(engine):
    """With 8-bit activation codes the x86 kernels' sums differ from the true integer sums; the
    difference is exactly the int16 saturation of paired products (vpmaddubsw)."""
    lin, x, y_qp = _layer(seed=1)
    x_qp = (5 / 255, 51)
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 255).to(torch.uint8)
    layer = IntegerLinear(lin, x_qp, y_qp, rounding="float")
    theirs = _torch_linear(engine, layer, q_x, x_qp, y_qp)
    assert not torch.equal(layer(q_x), theirs)  # the exact integer sum is not what x86 computes
    acc = layer.accumulate(q_x, saturate_pairs=True)
    emulated = (torch.round(acc.float() * layer.multiplier_f32 + layer.bias / y_qp[0]) + y_qp[1]).clamp(0, 255)
    assert torch.equal(emulated.to(torch.uint8), theirs)


def test_qnnpack_has_no_int16_saturation_on_full_range_activations():
    lin, x, y_qp = _layer(seed=1)
    x_qp = (5 / 255, 51)
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 255).to(torch.uint8)
    layer = IntegerLinear(lin, x_qp, y_qp, rounding="float_int32_bias")
    assert torch.equal(layer(q_x), _torch_linear("qnnpack", layer, q_x, x_qp, y_qp))


def test_fixed_point_requantization_is_within_one_code_of_the_float_one():
    lin, x, y_qp = _layer(seed=2)
    x_qp = (5 / 255, 51)
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 255).to(torch.uint8)
    ref = IntegerLinear(lin, x_qp, y_qp, rounding="float_int32_bias")(q_x).int()
    for rounding in ("double", "single"):
        out = IntegerLinear(lin, x_qp, y_qp, rounding=rounding)(q_x).int()
        assert (out - ref).abs().max() <= 1
        assert (out != ref).float().mean() < 0.01


# ---------------------------------------------------------------- a whole MLP on integers
def test_integer_mlp_runs_on_integers_only_and_agrees_with_float():
    from qedu.data import load_digits
    from qedu.models import evaluate, pretrained

    data = load_digits(seed=0)
    model = pretrained("mlp", seed=0)
    imlp = IntegerMLP(model, data.x_train[:256], rounding="double")
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype))) for m in imlp.layers]
    preds = imlp.predict(data.x_test)
    for h in hooks:
        h.remove()
    assert seen and all(not a.is_floating_point and not b.is_floating_point for a, b in seen)
    for layer in imlp.layers:  # every tensor the integer path reads is an integer
        assert all(not getattr(layer, n).is_floating_point() for n in ("q_w", "bias_q", "m0", "shift"))
    acc_int = (preds == data.y_test).float().mean().item()
    acc_float = evaluate(model, data.x_test, data.y_test)
    assert acc_int > acc_float - 0.02
    with torch.no_grad():
        agree = (preds == model(data.x_test).argmax(1)).float().mean().item()
    assert agree > 0.97


def test_bad_input_is_refused():
    lin = nn.Linear(4, 2)
    with pytest.raises(TypeError, match="linear"):
        IntegerLinear(nn.Conv2d(1, 1, 1), (0.1, 0), (0.1, 0))
    with pytest.raises(ValueError, match="rounding"):
        IntegerLinear(lin, (0.1, 0), (0.1, 0), rounding="nearest")
    with pytest.raises(TypeError, match="integer"):
        IntegerLinear(lin, (0.1, 0), (0.1, 0))(torch.ones(1, 4))
    with pytest.raises(ValueError, match="no nn.Linear"):
        IntegerMLP(nn.ReLU(), torch.ones(2, 4))
    with pytest.raises(ValueError, match="x_calib"):
        IntegerMLP(nn.Sequential(nn.Linear(4, 2)), torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="x_calib"):
        IntegerCNN(nn.Sequential(nn.Conv2d(1, 1, 3)), torch.empty(0, 1, 8, 8))
    with pytest.raises(ValueError, match="LSTM"):
        IntegerCNN(nn.Sequential(nn.LSTM(2, 2)), torch.ones(1, 2))
    with pytest.raises(ValueError, match="power_of_two"):
        IntegerCNN(nn.Sequential(nn.Conv2d(1, 1, 3)), torch.ones(1, 1, 8, 8), power_of_two="yes")


# ---------------------------------------------------------------- per-channel requantization without a loop
def test_vectorised_requantization_equals_one_channel_at_a_time():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (64, 12), generator=g)
    reals = torch.rand(12, generator=g, dtype=torch.float64) * 0.02 + 1e-5
    reals[3] = 1.7  # a multiplier above 1: a left shift first
    pairs = [quantize_multiplier(float(r)) for r in reals]
    m0 = torch.tensor([p[0] for p in pairs])
    shift = torch.tensor([p[1] for p in pairs])
    for rounding in ("double", "single"):
        together = multiply_by_quantized_multiplier(acc, m0, shift, rounding)
        apart = torch.stack([multiply_by_quantized_multiplier(acc[:, o], pairs[o][0], pairs[o][1], rounding)
                             for o in range(12)], dim=1)
        assert torch.equal(together, apart)
    exps = torch.arange(12) % 5
    assert torch.equal(rounding_divide_by_pot(acc, exps),
                       torch.stack([rounding_divide_by_pot(acc[:, o], int(exps[o])) for o in range(12)], dim=1))
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(acc, torch.tensor([1, 32]))
    with pytest.raises(TypeError, match="m0"):
        multiply_by_quantized_multiplier(acc, 0.5, 0)


# ---------------------------------------------------------------- power-of-two multipliers: a shift
def test_power_of_two_multiplier_rounds_in_log2():
    assert power_of_two_multiplier(0.25) == (2**30, -1)  # exactly 2^-2 = 2^30 * 2^(-1 - 31)
    assert power_of_two_multiplier(0.3) == (2**30, -1)  # log2 0.3 = -1.74 -> 2^-2
    assert power_of_two_multiplier(0.37) == (2**30, 0)  # log2 0.37 = -1.43 -> 2^-1
    assert power_of_two_multiplier(0.0) == (0, 0)
    for real in (1e-4, 0.013, 0.7, 3.0):
        m0, shift = power_of_two_multiplier(real)
        pot = m0 * 2.0 ** (shift - 31)
        assert math.log2(pot) == round(math.log2(real))
        assert 2**-0.5 <= pot / real <= 2**0.5


def test_a_power_of_two_layer_requantizes_by_a_rounding_shift():
    lin, x, y_qp = _layer(seed=3)
    x_qp = (2.0**-6, 64)
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 255).to(torch.uint8)
    y_qp = (2.0 ** math.ceil(math.log2(y_qp[0])), y_qp[1])
    layer = IntegerLinear(lin, x_qp, y_qp, power_of_two="scales")
    assert torch.equal(layer.s_w, torch.exp2(torch.log2(layer.s_w).round()))  # weight scales are powers of two
    real = x_qp[0] * layer.s_w.double() / y_qp[0]
    assert torch.equal(real, torch.exp2(layer.shift.double() - 1))  # so M is exactly 2^(shift - 1): no rounding
    acc = layer.accumulate(q_x) + layer.bias_q.long()
    expected = (rounding_divide_by_pot(acc, 1 - layer.shift) + y_qp[1]).clamp(0, 255)
    assert torch.equal(layer(q_x).long(), expected)
    with pytest.raises(ValueError, match="power_of_two"):
        IntegerLinear(lin, x_qp, y_qp, power_of_two=True)
    with pytest.raises(ValueError, match="power_of_two"):
        IntegerLinear(lin, x_qp, y_qp, rounding="float", power_of_two="scales")


# ---------------------------------------------------------------- convolution from integer im2col
def test_integer_conv_equals_an_exact_integer_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    x_qp, y_qp = (0.02, 37), (0.05, 11)
    q_x = torch.randint(0, 256, (2, 3, 6, 7), dtype=torch.uint8)
    layer = IntegerConv2d(conv, x_qp, y_qp)
    q_w = layer.linear.q_w.long().reshape(5, 3, 3, 3)  # (C_out, C_in*9) -> (C_out, C_in, 3, 3)
    # float64 holds these integer sums exactly; padding with 0 after subtracting z_x = padding with z_x codes
    acc = torch.nn.functional.conv2d(q_x.double() - x_qp[1], q_w.double(), padding=1).round().long()
    acc = acc.permute(0, 2, 3, 1).reshape(-1, 5)  # (N, C_out, H, W) -> (N*H*W, C_out)
    expected = layer.linear.requantize(acc).reshape(2, 6, 7, 5).permute(0, 3, 1, 2)
    assert torch.equal(layer(q_x), expected)
    assert layer(q_x).shape == (2, 5, 6, 7)
    with pytest.raises(TypeError, match="conv"):
        IntegerConv2d(nn.Linear(2, 2), x_qp, y_qp)
    with pytest.raises(ValueError, match="groups"):
        IntegerConv2d(nn.Conv2d(4, 4, 3, groups=2), x_qp, y_qp)


def test_integer_max_pool_takes_the_max_code():
    q = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    pooled = IntegerMaxPool2d(nn.MaxPool2d(2))(q)
    assert pooled.dtype == torch.uint8
    assert torch.equal(pooled.long(), torch.nn.functional.max_pool2d(q.float(), 2).long())


# ---------------------------------------------------------------- no float op anywhere: a dispatch trace
@pytest.fixture(scope="module")
def digits():
    from qedu.data import load_digits
    return load_digits(seed=0)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("rounding, power_of_two", [("double", None), ("single", None), ("double", "scales")])
def test_every_intermediate_of_the_integer_model_is_an_integer(digits, kind, rounding, power_of_two):
    from qedu.models import pretrained

    model = pretrained(kind, seed=0)
    cls = IntegerMLP if kind == "mlp" else IntegerCNN
    imodel = cls(model, digits.x_calib, rounding=rounding, power_of_two=power_of_two)
    q_x = imodel.quantize_input(digits.x_test[:8])
    ops = trace_dtypes(imodel, q_x)
    names = {name for name, _ in ops}
    assert any("mm" in n for n in names)  # the matmuls were traced, not skipped
    assert len(ops) > 50
    floats = [(name, dt) for name, dt in ops if dt.is_floating_point or dt.is_complex]
    assert floats == [], floats[:5]
    assert imodel(q_x).dtype == torch.uint8


def test_the_trace_sees_a_float_op_when_there_is_one(digits):
    from qedu.models import pretrained

    imodel = IntegerMLP(pretrained("mlp", seed=0), digits.x_calib, rounding="float")
    ops = trace_dtypes(imodel, imodel.quantize_input(digits.x_test[:8]))
    assert any(dt == torch.float32 for _, dt in ops)  # torch's float multiplier: the trace catches it


# ---------------------------------------------------------------- integer models vs the fake-quantized ones
def _fake_quant_predictions(model, digits):
    from qedu.ptq import PTQConfig, quantize_model

    fq = quantize_model(model, PTQConfig(), digits.x_calib)  # int8 per-channel weights, uint8 min/max activations
    with torch.no_grad():
        return fq(digits.x_test).argmax(1)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_integer_model_agrees_with_the_fake_quantized_model(digits, kind):
    from qedu.integer import integer_vs_fake_quant
    from qedu.models import pretrained

    model = pretrained(kind, seed=0)
    report = integer_vs_fake_quant(model, digits)
    fq_pred = _fake_quant_predictions(model, digits)
    assert report["fake_quant_accuracy"] == pytest.approx((fq_pred == digits.y_test).float().mean().item())
    assert report["agreement"] >= 0.99  # the same grids, computed in integers: at most 1 % of predictions differ
    assert abs(report["integer_accuracy"] - report["fake_quant_accuracy"]) <= 0.01
    assert report["integer_accuracy"] >= report["float_accuracy"] - 0.02


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_power_of_two_scales_cost_less_than_power_of_two_multipliers(digits, kind):
    from qedu.integer import integer_vs_fake_quant
    from qedu.models import pretrained

    model = pretrained(kind, seed=0)
    exact = integer_vs_fake_quant(model, digits)
    scales = integer_vs_fake_quant(model, digits, power_of_two="scales")
    mult = integer_vs_fake_quant(model, digits, power_of_two="multiplier")
    # rounding the scales coarsens every grid by < 2x: a few dB of logit SQNR, no accuracy on digits
    assert exact["logit_sqnr_db"] - 6 < scales["logit_sqnr_db"] < exact["logit_sqnr_db"]
    assert scales["integer_accuracy"] >= exact["integer_accuracy"] - 0.005
    # rounding only the multipliers mis-scales every channel by up to sqrt(2): the logits fall apart
    assert mult["logit_sqnr_db"] < 20 < scales["logit_sqnr_db"]
    assert mult["integer_accuracy"] <= scales["integer_accuracy"]


@pytest.mark.parametrize("engine, rounding", [("x86", "float"), ("fbgemm", "float"), ("onednn", "float"),
                                              ("qnnpack", "float_int32_bias")])
def test_integer_conv_equals_torchs_quantized_conv2d(engine, rounding):
    """Integer im2col + the linear layer's requantization = torch's int8 conv kernels, bit for bit
    (padding with the input zero point included), with 7-bit activation codes as for linear."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this torch build has no {engine} engine")
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 4 - 1
    with torch.no_grad():
        y = conv(x)
    s_y = float((y.max() - y.min()) / 255)
    y_qp, x_qp = (s_y, int(round(-float(y.min()) / s_y))), (10 / 255, 25)
    q_x = torch.clamp(torch.round(x / x_qp[0]) + x_qp[1], 0, 127).to(torch.uint8)
    layer = IntegerConv2d(conv, x_qp, y_qp, rounding=rounding)
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine
    try:
        qw = torch._make_per_channel_quantized_tensor(layer.linear.q_w.reshape(8, 3, 3, 3), layer.linear.s_w.double(),
                                                      torch.zeros(8, dtype=torch.int64), 0)
        packed = torch.ops.quantized.conv2d_prepack(qw, layer.linear.bias, [1, 1], [1, 1], [1, 1], 1)
        qx = torch._make_per_tensor_quantized_tensor(q_x, *x_qp)
        theirs = torch.ops.quantized.conv2d(qx, packed, y_qp[0], y_qp[1]).int_repr()
    finally:
        torch.backends.quantized.engine = previous
    assert torch.equal(layer(q_x), theirs)
