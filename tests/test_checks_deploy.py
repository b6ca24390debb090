"""Tests for qedu/checks/deploy.py: each check passes correct code, reports stubs, names every mistake."""
import math

import pytest
import torch

from qedu import checks
from qedu.checks.deploy import (INTEGER_LINEAR, PSI, QUANTIZE_MULTIPLIER, integer_linear_reference, psi_reference,
                                quantize_multiplier_reference)
from qedu.integer import IntegerLinear
from qedu.integer_arithmetic import accumulate, zero_point_terms
from tests.check_contract import check_contract, exercise_solutions

SOLUTIONS = exercise_solutions("11_deployment_and_monitoring")


def integer_linear_expanded(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    """A correct variant: the four terms of the zero-point expansion."""
    return (accumulate(zero_point_terms(q_x.long(), zero_point_x, q_w.long(), zero_point_w)) + bias_q).to(torch.int32)


CHECKS = {
    "quantize_multiplier": (checks.check_quantize_multiplier, QUANTIZE_MULTIPLIER, SOLUTIONS["quantize_multiplier"]),
    "integer_linear": (checks.check_integer_linear, INTEGER_LINEAR, SOLUTIONS["integer_linear"], integer_linear_expanded),
    "psi": (checks.check_psi, PSI, SOLUTIONS["psi"]),
}

test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CHECKS
)


def test_multiplier_reference_reproduces_the_real_value():
    for real in (0.5, 0.1, 3e-5, 0.9999):
        m0, shift = quantize_multiplier_reference(real)
        assert 2**30 <= m0 < 2**31
        assert abs(m0 * 2.0 ** (shift - 31) - real) <= real * 2**-31


def test_integer_linear_reference_is_the_accumulator_of_qedu_integer_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 4)
    layer = IntegerLinear(lin, (0.05, 100), (0.1, 10))
    q_x = torch.randint(0, 256, (3, 16), dtype=torch.uint8)
    acc = integer_linear_reference(q_x, 100, layer.q_w, 0, layer.bias_q)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.long(), layer.accumulate(q_x) + layer.bias_q.long())


def test_psi_reference_by_hand():
    assert psi_reference(torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2), rel=1e-6)
    assert psi_reference(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])) == 0.0

