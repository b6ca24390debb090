"""Tests for qedu/checks/llm.py: each check passes correct code, reports stubs, names every mistake."""
from qedu.checks.llm import (GPTQ_COLUMN_UPDATE, NF4_BITS, RTN_GROUPWISE, SMOOTHQUANT_SCALES, check_gptq_column_update,
                             check_nf4_bits_per_parameter, check_rtn_groupwise, check_smoothquant_scales)
from tests.check_contract import check_contract, exercise_solutions

SOLUTIONS = exercise_solutions("10_llm_weight_quantization")

test_passes, test_stub, test_mistakes = check_contract({
    "rtn_groupwise": (check_rtn_groupwise, RTN_GROUPWISE, SOLUTIONS["rtn_groupwise"]),
    "gptq_column_update": (check_gptq_column_update, GPTQ_COLUMN_UPDATE, SOLUTIONS["gptq_column_update"]),
    "smoothquant_scales": (check_smoothquant_scales, SMOOTHQUANT_SCALES, SOLUTIONS["smoothquant_scales"]),
    "nf4_bits_per_parameter": (check_nf4_bits_per_parameter, NF4_BITS, SOLUTIONS["nf4_bits"]),
})


def test_the_gptq_update_lands_column_i_on_q():
    import torch

    from qedu.checks.llm import _gptq_case
    import numpy as np

    case = _gptq_case(np.random.default_rng(0))
    W, U, i, q = case.args
    new = GPTQ_COLUMN_UPDATE.reference(W, U, i, q)
    assert torch.allclose(new[:, i], q) and torch.equal(new[:, :i], W[:, :i])
