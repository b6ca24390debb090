"""The exercise-check machinery: passes right answers, names classic mistakes, never crashes on stubs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qedu import checks
from qedu.checks.framework import Case, CheckFailed, CheckSpec, Mistake, compare, run_check
from qedu.checks import welcome


def _spec(**kw):
    base = dict(
        name="add_one",
        reference=lambda x: x + 1,
        golden=[Case((torch.tensor([1, 2]),), label="small")],
        random_case=lambda rng: Case((torch.as_tensor(rng.integers(-5, 5, size=3)),)),
        mistakes=[Mistake("added two", lambda x: x + 2, "one, not two")],
        hints=("add exactly one",),
    )
    base.update(kw)
    return CheckSpec(**base)


def test_passes_the_reference(capsys):
    result = run_check(_spec(), lambda x: x + 1)
    assert result.passed and result.n_cases == 21
    assert "✅ add_one" in capsys.readouterr().out


def test_stub_reports_not_implemented_without_raising(capsys):
    def stub(x):
        raise NotImplementedError

    result = run_check(_spec(), stub)
    assert result.status == "not implemented" and not result.passed
    assert "not implemented yet" in capsys.readouterr().out


def test_known_mistake_is_named():
    with pytest.raises(CheckFailed, match="likely mistake: added two. Hint: one, not two"):
        run_check(_spec(), lambda x: x + 2)


def test_unknown_mistake_shows_expected_actual_and_hints():
    with pytest.raises(CheckFailed) as info:
        run_check(_spec(), lambda x: x * 0)
    msg = str(info.value)
    assert "golden case 'small'" in msg and "expected" in msg and "got" in msg and "add exactly one" in msg
    assert "likely mistake" not in msg


def test_mistake_found_only_on_random_case_reports_seed():
    # right on the golden case (x=[1,2]), wrong whenever x has a negative entry
    with pytest.raises(CheckFailed, match=r"random case \d+ \(seed 1234\)"):
        run_check(_spec(), lambda x: x.abs() + 1)


def test_crash_is_reported_with_the_input():
    def crashes(x):
        raise KeyError("oops")

    with pytest.raises(CheckFailed, match=r"(?s)raised KeyError.*add_one\(tensor\(\[1, 2\]"):
        run_check(_spec(), crashes)


def test_wrong_type_dtype_shape_are_each_reported():
    with pytest.raises(CheckFailed, match="should be a torch.Tensor"):
        run_check(_spec(), lambda x: (x + 1).numpy())
    with pytest.raises(CheckFailed, match="dtype torch.float32, expected torch.int64"):
        run_check(_spec(), lambda x: (x + 1).float())
    with pytest.raises(CheckFailed, match=r"shape \(1, 2\), expected \(2,\)"):
        run_check(_spec(), lambda x: (x + 1)[None])


def test_function_mutating_its_input_cannot_fool_the_check():
    def mutates(x):
        x += 1
        return x

    run_check(_spec(), mutates)  # correct output despite the mutation: inputs are copied per call


def test_not_a_function_is_a_clear_type_error():
    with pytest.raises(TypeError, match="pass it without"):
        run_check(_spec(), 3)


@pytest.mark.parametrize(
    "expected, actual, fragment",
    [
        (1.0, 1.0 + 1e-9, "expected 1.0"),
        ((1, 2), (1,), "should have 2 items"),
        (3, 3.0, "should be an int"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "differs at 1 of 2"),
        (True, 1, "should be True or False"),
    ],
)
def test_compare_reports_differences(expected, actual, fragment):
    assert fragment in compare(expected, actual)


def test_compare_accepts_equal_values_and_nans_and_tolerance():
    assert compare(np.array([1.0, np.nan]), np.array([1.0, np.nan])) is None
    assert compare(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7]), atol=1e-6) is None
    assert compare(0.5, 0.5) is None and compare((1, "a"), (1, "a")) is None


# --- the warm-up check of lesson 00: every registered mistake is caught and named --------------

def test_snap_to_levels_check_passes_reference():
    assert checks.check_snap_to_levels(welcome.snap_to_levels_reference).passed


@pytest.mark.parametrize("mistake", welcome.SPEC.mistakes, ids=[m.name for m in welcome.SPEC.mistakes])
def test_snap_to_levels_check_names_each_classic_mistake(mistake):
    with pytest.raises(CheckFailed, match=f"likely mistake: {mistake.name}"):
        checks.check_snap_to_levels(mistake.impl)
