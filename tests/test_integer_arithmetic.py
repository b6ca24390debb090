"""qedu.integer_arithmetic: the zero-point cross terms, per-output-channel scales, W4A16."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.formats import INT4, INT8, UINT8
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.integer_arithmetic import accumulate, dequantize_linear, integer_linear, zero_point_terms
from qedu.quantizers import choose_qparams, dequantize, quantize


def _quantized(seed, n=5, k=32, o=6, w_granularity=PerChannel(0), w_symmetric=False, w_fmt=INT8):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.rand(n, k, generator=g) * 3 - 0.5, torch.randn(o, k, generator=g)
    s_x, z_x = choose_qparams(x, UINT8, symmetric=False)
    s_w, z_w = choose_qparams(w, w_fmt, w_granularity, symmetric=w_symmetric)
    return quantize(x, s_x, z_x, UINT8), s_x, z_x, quantize(w, s_w, z_w, w_fmt), s_w, z_w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), zp_x=st.integers(-128, 127), zp_w=st.integers(-128, 127))
def test_the_four_terms_add_up_to_the_direct_product(seed, zp_x, zp_w):
    g = torch.Generator().manual_seed(seed)
    q_x, q_w = torch.randint(-128, 128, (3, 17), generator=g), torch.randint(-128, 128, (4, 17), generator=g)
    direct = (q_x.long() - zp_x) @ (q_w.long() - zp_w).T  # exact in int64
    assert torch.equal(accumulate(zero_point_terms(q_x, zp_x, q_w, zp_w)), direct)


def test_a_hand_case_term_by_term():
    q_x, q_w = torch.tensor([[3, 0, 5]]), torch.tensor([[1, -2, 2]])
    t = zero_point_terms(q_x, 1, q_w, 2)
    # products 3*1 + 0 + 5*2 = 13; -z_x*sum(q_w) = -1; -z_w*sum(q_x) = -16; K*z_x*z_w = 6
    assert [int(v) for v in t] == [13, -1, -16, 6]
    assert int(accumulate(t)) == (3 - 1) * (1 - 2) + (0 - 1) * (-2 - 2) + (5 - 1) * (2 - 2) == 2


def test_symmetric_weights_drop_the_run_time_terms():
    q_x, s_x, z_x, q_w, s_w, z_w = _quantized(0, w_symmetric=True)
    t = zero_point_terms(q_x, z_x, q_w, z_w)
    assert not t.input_sums.any() and not t.constant.any() and t.weight_sums.any()


@pytest.mark.parametrize("w_granularity", [PerTensor(), PerChannel(0)], ids=repr)
@pytest.mark.parametrize("w_symmetric", [True, False], ids=["symmetric", "affine"])
def test_integer_linear_equals_dequantize_then_matmul(w_granularity, w_symmetric):
    for seed in range(5):
        q_x, s_x, z_x, q_w, s_w, z_w = _quantized(seed, w_granularity=w_granularity, w_symmetric=w_symmetric)
        bias = torch.randn(q_w.shape[0], generator=torch.Generator().manual_seed(seed))
        ours = integer_linear(q_x, s_x, z_x, q_w, s_w, z_w, bias)
        reference = dequantize_linear(q_x, s_x, z_x, q_w, s_w, z_w, bias)
        exact = (dequantize(q_x, s_x, z_x).double() @ dequantize(q_w, s_w, z_w).double().T + bias.double()).float()
        assert torch.allclose(ours, exact, rtol=1e-6, atol=1e-5)
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_a_per_group_scale_does_not_factor_out():
    q_x, s_x, z_x, q_w, s_w, z_w = _quantized(0, w_granularity=PerGroup(8), w_symmetric=True, w_fmt=INT4)
    assert s_w.shape == q_w.shape  # one scale per run of 8 inputs: it varies along K
    with pytest.raises(ValueError, match="does not factor out of an integer matmul; use dequantize_linear"):
        integer_linear(q_x, s_x, z_x, q_w, s_w, z_w)
    # Pulling one scale per row out of the sum anyway (its mean) gives a wrong answer ...
    wrong = integer_linear(q_x, s_x, z_x, q_w, s_w.mean(dim=1), z_w[:, 0])
    right = dequantize_linear(q_x, s_x, z_x, q_w, s_w, z_w)
    assert (wrong - right).abs().max() > 1e-2
    # ... while dequantize-then-matmul is exact up to float32 rounding.
    exact = dequantize(q_x, s_x, z_x).double() @ dequantize(q_w, s_w, z_w).double().T
    assert torch.allclose(right.double(), exact, atol=1e-5)


def test_bad_input_names_the_argument():
    q = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="q_x must be a tensor of integer codes"):
        zero_point_terms(torch.zeros(2, 3), 0, q, 0)
    with pytest.raises(ValueError, match="q_w must have shape"):
        zero_point_terms(q, 0, torch.zeros(3, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="they must match"):
        zero_point_terms(q, 0, torch.zeros(4, 5, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="zero_point_w must be a scalar or hold one value per output channel"):
        zero_point_terms(q, 0, q, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="zero_point_x must hold integers"):
        zero_point_terms(q, 0.5, q, 0)
