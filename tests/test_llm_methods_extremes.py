"""The LLM weight-quantization modules on extreme floats: finite output or a clear error (issue 20's rule).

Weights and inputs mix float32's extremes, float64 values beyond float32, subnormals, signed
zeros, inf and NaN with ordinary values. Every call must either raise a ValueError/TypeError or
return only finite numbers.
"""
import math

import pytest
import torch

from qedu import awq, gptq, llm_int8, nf4, rtn, smoothquant

F32 = torch.finfo(torch.float32)
EXTREMES = [F32.max, -F32.max, F32.tiny, 1.4e-45, 0.0, -0.0, 0.1, 3e38, -3e38, 1e38, 1e-38, 1e39, 1e-320, 1e300,
            math.inf, -math.inf, math.nan]


def _finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, (tuple, list)):
        return all(_finite(v) for v in out)
    if isinstance(out, float):
        return math.isfinite(out)
    return True


def _tensor(v, rows=2):
    return torch.tensor([[v, 0.5, -0.25, 1.0] * 2] * rows, dtype=torch.float64)  # (rows, 8)


X = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
CALLS = {
    "rtn gptq": lambda t: rtn.rtn_quantize(t, 4, 4),
    "rtn awq asym": lambda t: rtn.rtn_quantize(t, 3, 4, convention="awq"),
    "rtn awq sym": lambda t: rtn.rtn_quantize(t, 4, None, True, "awq"),
    "gptq weight": lambda t: gptq.gptq_quantize(t, X, group_size=4),
    "gptq inputs": lambda t: gptq.gptq_quantize(torch.randn(2, 8), t.repeat(4, 1), group_size=4, act_order=True),
    "hessian": lambda t: gptq.hessian(t),
    "awq weight": lambda t: awq.awq_quantize(t, X, group_size=4, n_grid=3, clip=True),
    "awq inputs": lambda t: awq.awq_quantize(torch.randn(2, 8), t.repeat(4, 1), group_size=4, n_grid=3, clip=True),
    "awq_scales": lambda t: awq.awq_scales(t.abs()[0], 0.5),
    "nf4": lambda t: nf4.nf4_fake_quantize(t),
    "nf4 lut": lambda t: nf4.nf4_fake_quantize(t, absmax_rounding="lut"),
    "vectorwise_quantize": lambda t: llm_int8.vectorwise_quantize(t, 6.0),
    "int8_linear inputs": lambda t: llm_int8.int8_linear(t, *llm_int8.vectorwise_quantize(torch.randn(3, 8))[:2]),
    "int8_linear weight": lambda t: llm_int8.int8_linear(torch.randn(3, 8), *llm_int8.vectorwise_quantize(t)[:2]),
    "smoothing_scales act": lambda t: smoothquant.smoothing_scales(t.abs()[0], torch.ones(8)),
    "smoothing_scales weight": lambda t: smoothquant.smoothing_scales(torch.ones(8), t.abs()[0]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_finite_output_or_a_clear_error(name):
    for v in EXTREMES:
        try:
            out = CALLS[name](_tensor(v))
        except (ValueError, TypeError) as err:
            assert len(str(err)) > 20, f"{name}({v}): terse error {err!r}"
            continue
        assert _finite(out), f"{name}({v}) returned a non-finite value without saying so"
