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

from qedu.integer import (INT32_MAX, INT32_MIN, IntegerLinear, IntegerMLP, multiply_by_quantized_multiplier,
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
    torch.backends.quantized.engine = engine
    n_out = layer.q_w.shape[0]
    qw = torch._make_per_channel_quantized_tensor(layer.q_w, layer.s_w.double(), torch.zeros(n_out, dtype=torch.int64), 0)
    packed = torch.ops.quantized.linear_prepack(qw, layer.bias)
    qx = torch._make_per_tensor_quantized_tensor(q_x, x_qp[0], x_qp[1])
    return torch.ops.quantized.linear(qx, packed, y_qp[0], y_qp[1]).int_repr()


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
