"""qedu.llm_int8: LLM.int8() from scratch, and exactly bitsandbytes' int8_vectorwise_quant / int8_mm_dequant."""
import pytest
import torch
from torch import nn

from qedu.llm_int8 import (
    BNB_CPU_FACTOR, Int8Linear, int8_linear, int8_mm_dequant, llm_int8_model, outlier_columns, vectorwise_quantize,
)

REASON = "bitsandbytes (the 'ref' extra, pip install -e .[ref]) is not installed; CI installs it"


def activations(seed=0, n=64, c=256, outlier_cols=(3, 77, 200), size=12.0):
    """Token activations with a few outlier channels, as LLM.int8() describes (test data, not a model claim)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    for k in outlier_cols:
        x[::3, k] = size * torch.sign(torch.randn(len(range(0, n, 3)), generator=g))  # every 3rd token
    return x


def test_vectorwise_quantize_by_hand():
    x = torch.tensor([[1.0, -0.5, 8.0], [2.0, 0.0, 1.0]])
    q, absmax, cols = vectorwise_quantize(x, threshold=6.0)
    assert cols.tolist() == [2]
    assert absmax.tolist() == [1.0, 2.0]  # 8.0 left out of row 0's absmax
    assert q.tolist() == [[127, -64, 0], [127, 0, 0]]  # -0.5 * 127 = -63.5 -> -64 (half to even); column 2 zeroed
    q0, absmax0, cols0 = vectorwise_quantize(x)  # threshold 0: no outliers
    assert cols0.numel() == 0 and absmax0.tolist() == [8.0, 2.0] and q0[0].tolist() == [16, -8, 127]


def test_only_outlier_values_leave_the_absmax_not_whole_columns():
    x = torch.tensor([[7.0, 0.5], [3.0, 1.0]])  # column 0 is an outlier column because of 7.0; 3.0 is not an outlier
    q, absmax, cols = vectorwise_quantize(x, threshold=6.0)
    assert cols.tolist() == [0] and absmax.tolist() == [0.5, 3.0]  # row 1 keeps 3.0 in its absmax
    assert q[:, 0].tolist() == [0, 0] and q[1, 1].item() == round(127 / 3)


def test_all_zero_row_gets_zero_codes():
    q, absmax, _ = vectorwise_quantize(torch.zeros(2, 4))
    assert torch.equal(q, torch.zeros(2, 4, dtype=torch.int8)) and absmax.tolist() == [0.0, 0.0]


def test_int8_linear_is_the_int8_part_plus_the_float_part():
    x, w = activations(1), torch.randn(32, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    wq, sw, _ = vectorwise_quantize(w)
    y = int8_linear(x, wq, sw, threshold=6.0)
    xq, sx, cols = vectorwise_quantize(x, 6.0)
    assert cols.tolist() == [3, 77, 200]
    int8_part = (xq.long() @ wq.long().T).float() * sx[:, None] * sw[None, :] / 127**2
    float_part = x[:, cols] @ (wq[:, cols].float() * sw[:, None] / 127).T
    torch.testing.assert_close(y, int8_part + float_part, rtol=1e-6, atol=1e-6)


def test_outlier_decomposition_is_what_saves_the_accuracy():
    x, w = activations(3, size=20.0), torch.randn(64, 256, generator=torch.Generator().manual_seed(4)) * 0.05
    wq, sw, _ = vectorwise_quantize(w)
    ref = x @ w.T
    err = lambda y: float(((y - ref) ** 2).mean() / (ref**2).mean())
    weight_only = err(x @ (wq.float() * sw[:, None] / 127).T)  # the int8 weight's own error, shared by both
    with_outliers = err(int8_linear(x, wq, sw, threshold=6.0)) - weight_only
    plain = err(int8_linear(x, wq, sw, threshold=0.0)) - weight_only
    assert 0 < with_outliers < plain / 10  # outlier rows no longer crush every other value of their token
    clean = activations(3, outlier_cols=())  # without outliers the two are the same computation
    torch.testing.assert_close(int8_linear(clean, wq, sw, threshold=6.0), int8_linear(clean, wq, sw, threshold=0.0))


def test_int8_module_and_model_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = llm_int8_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(q[0], Int8Linear) and isinstance(q[2], Int8Linear) and isinstance(model[0], nn.Linear)
    x = torch.randn(10, 16)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert float(((out - ref) ** 2).mean() / (ref**2).mean()) < 1e-3
    assert out.shape == (10, 4) and Int8Linear(model[0])(x[None]).shape == (1, 10, 32)


def test_outlier_columns():
    assert outlier_columns(activations(0)).tolist() == [3, 77, 200]
    assert outlier_columns(activations(0), threshold=0).numel() == 0


def test_default_factor_is_one_over_127_squared():
    acc = torch.tensor([[16129, -16129]], dtype=torch.int32)
    assert int8_mm_dequant(acc, torch.tensor([1.0]), torch.tensor([1.0, 2.0])).tolist() == [[1.0, -2.0]]
    assert BNB_CPU_FACTOR * 127**2 == pytest.approx(1 + 1.8e-5, rel=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: vectorwise_quantize(torch.randn(4)), "2-D"),
    (lambda: vectorwise_quantize(torch.randn(2, 4), threshold=-1.0), "threshold"),
    (lambda: vectorwise_quantize(torch.tensor([[float("nan")]])), "NaN"),
    (lambda: int8_mm_dequant(torch.zeros(2, 3), torch.ones(2), torch.ones(3)), "int32"),
    (lambda: int8_mm_dequant(torch.zeros(2, 3, dtype=torch.int32), torch.ones(3), torch.ones(3)), "row_absmax must have shape"),
    (lambda: int8_linear(torch.randn(2, 4), torch.zeros(3, 4), torch.ones(3)), "int8"),
    (lambda: int8_linear(torch.randn(2, 5), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3)), "features"),
    (lambda: Int8Linear(torch.randn(3, 3)), "nn.Linear"),
    (lambda: int8_linear(torch.full((2, 4), 3e38), *vectorwise_quantize(torch.full((3, 4), 3e38))[:2], threshold=0.0),
     "beyond float32"),
    (lambda: llm_int8_model(nn.Linear(2, 2), threshold="6"), "threshold"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# ------------------------------------------------------------------ bitsandbytes 0.50.2 cross-checks
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("threshold", [0.0, 6.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorwise_quantize_equals_bitsandbytes(dtype, threshold, seed):
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    x = activations(seed, n=96, c=512).to(dtype)
    bq, brow, bcols = F.int8_vectorwise_quant(x.clone(), threshold=threshold)  # bitsandbytes writes into its input
    q, row, cols = vectorwise_quantize(x, threshold)
    assert torch.equal(bq, q) and torch.equal(brow, row)
    assert torch.equal(cols, bcols if bcols is not None else torch.zeros(0, dtype=torch.int64))


@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_mm_dequant_equals_bitsandbytes(with_bias):
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    x = activations(5, n=48, c=384).half()
    w = (torch.randn(80, 384, generator=torch.Generator().manual_seed(6)) * 0.05).half()
    xq, sx, _ = F.int8_vectorwise_quant(x.clone(), threshold=6.0)
    wq, sw, _ = F.int8_vectorwise_quant(w.clone())
    acc = (xq.double() @ wq.double().T).to(torch.int32)
    bias = torch.randn(80, generator=torch.Generator().manual_seed(7)).half() if with_bias else None
    ref = F.int8_mm_dequant(acc, sx, sw, bias=bias)  # float16
    ours = int8_mm_dequant(acc, sx, sw, bias, factor=BNB_CPU_FACTOR)
    assert torch.equal(ours.half(), ref)
    # with the exact 1/127^2 the two differ by bitsandbytes' 1.8e-5 relative excess (and fp16 rounding)
    exact = int8_mm_dequant(acc, sx, sw, bias)
    rel = ((ours - exact).abs() / exact.abs().clamp(min=1e-3)).max()
    assert 1e-5 < float(rel) < 3e-5 or with_bias


def test_int8_linear_matches_bitsandbytes_mixed_matmul_to_fp16_rounding():
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    x = activations(8, n=32, c=256).half()
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(9)) * 0.05).half()
    xq, sx, cols = F.int8_vectorwise_quant(x.clone(), threshold=6.0)
    wq, sw, _ = F.int8_vectorwise_quant(w.clone())
    ref, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm.default(x, xq, wq, sx, sw, cols, None)
    ours = int8_linear(x.float(), wq, sw, threshold=6.0, factor=BNB_CPU_FACTOR)
    torch.testing.assert_close(ours.half(), ref, rtol=2e-3, atol=2e-3)  # bitsandbytes adds the float part in fp16
