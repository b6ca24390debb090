"""Tests for qedu/checks/formats.py: each check passes correct code, reports stubs, names every mistake."""

import pytest

from qedu import checks
from qedu.checks.formats import EXMY_VALUE, FLOAT_MAX, INT_RANGE, ROUND_TO_EXMY
from qedu.checks.framework import CheckFailed
from tests.check_contract import check_contract, exercise_solutions


# The exercise notebook's own solutions, run as a learner would write them.
SOLUTIONS = exercise_solutions("01_number_formats")
int_range, exmy_value, float_max, round_to_exmy = (
    SOLUTIONS[n] for n in ("int_range", "exmy_value", "float_max", "round_to_exmy"))


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
    with pytest.raises(CheckFailed, match="right value, but a float"):
        checks.check_int_range(lambda bits, signed: (0.0, float(2**bits - 1)))
    with pytest.raises(CheckFailed, match="right values, but dtype float64; expected float32"):
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
