"""Tests for qedu/checks/formats.py: each check passes correct code, reports stubs, names every mistake."""

import pytest
import torch

from qedu import checks
from qedu.checks.formats import EXMY_VALUE, FLOAT_MAX, INT_RANGE, ROUND_TO_EXMY
from qedu.checks.framework import CheckFailed
from tests.check_contract import check_contract


# Solutions written the way a learner would (the same code as exercise_sources/01_number_formats.py).
def int_range(bits, signed):
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def exmy_value(sign, exponent, mantissa, exp_bits, man_bits):
    bias = 2 ** (exp_bits - 1) - 1
    if exponent == 0:
        magnitude = 2.0 ** (1 - bias) * (mantissa / 2**man_bits)
    else:
        magnitude = 2.0 ** (exponent - bias) * (1 + mantissa / 2**man_bits)
    return -magnitude if sign else magnitude


def float_max(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_exponent, top_mantissa = 2**exp_bits - 1, 2**man_bits - 1
    if special == "ieee":
        top_exponent -= 1
    elif special == "fn":
        top_mantissa -= 1
    return 2.0 ** (top_exponent - bias) * (1 + top_mantissa / 2**man_bits)


def round_to_exmy(x, exp_bits, man_bits):
    e = torch.floor(torch.log2(x.abs()))
    step = torch.exp2(e - man_bits)
    return torch.round(x / step) * step


CHECKS = {
    "int_range": (checks.check_int_range, INT_RANGE, int_range),
    "exmy_value": (checks.check_exmy_value, EXMY_VALUE, exmy_value),
    "float_max": (checks.check_float_max, FLOAT_MAX, float_max),
    "round_to_exmy": (checks.check_round_to_exmy, ROUND_TO_EXMY, round_to_exmy),
}
test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CHECKS
)


def test_wrong_type_and_crash_are_reported():
    with pytest.raises(CheckFailed, match="should be an int"):
        checks.check_int_range(lambda bits, signed: (0.0, float(2**bits - 1)))
    with pytest.raises(CheckFailed, match="has dtype torch.float64"):
        checks.check_round_to_exmy(lambda x, E, M: ROUND_TO_EXMY.reference(x, E, M).double())
    with pytest.raises(CheckFailed, match="your function raised ZeroDivisionError"):
        checks.check_float_max(lambda E, M, special: 1 / 0)
    with pytest.raises(TypeError, match="pass it without"):
        checks.check_exmy_value(exmy_value(0, 15, 0, 5, 10))


def test_golden_values_are_the_lesson_numbers():
    assert [INT_RANGE.reference(*c.args) for c in INT_RANGE.golden[:2]] == [(0, 255), (-128, 127)]
    assert [EXMY_VALUE.reference(*c.args) for c in EXMY_VALUE.golden[:5]] == [1.0, 1.5, -2.5, 448.0, 6.0]
    assert EXMY_VALUE.reference(*EXMY_VALUE.golden[5].args) == 2.0**-24
    assert [FLOAT_MAX.reference(*c.args) for c in FLOAT_MAX.golden] == [65504.0, 448.0, 6.0, 57344.0, 28.0]
    ties = ROUND_TO_EXMY.reference(*ROUND_TO_EXMY.golden[2].args)
    assert ties.tolist() == [1.0, 1.25, -1.0, 2.0, 2.5]
    assert ROUND_TO_EXMY.reference(*ROUND_TO_EXMY.golden[4].args).tolist() == [1.0, 2.0, 3.0, 4.0, -2.0]
