"""The exercise-check machinery: passes right answers, names a mistake only when a second probe
confirms it, describes other differences, checks properties, never crashes on stubs, and shows a
failure without a framework traceback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qedu import checks
from qedu.checks import welcome
from qedu.checks.framework import (FAIL, PASS, TODO, Case, CheckFailed, CheckResult, CheckSpec, Mistake, compare,
                                   localize, run_check)


def _spec(**kw):
    base = dict(
        name="add_one",
        reference=lambda x: x + 1,
        golden=[Case((torch.tensor([1, 2]),), label="small"), Case((torch.tensor([-3, 5]),), label="mixed")],
        random_case=lambda rng: Case((torch.as_tensor(rng.integers(-5, 5, size=3)),)),
        mistakes=[Mistake("added two", lambda x: x + 2, "one, not two")],
        hints=("add exactly one",),
    )
    base.update(kw)
    return CheckSpec(**base)


def test_passes_the_reference(capsys):
    result = run_check(_spec(), lambda x: x + 1)
    assert result.passed and result.n_cases == 22
    assert f"{PASS} add_one" in capsys.readouterr().out


def test_stub_reports_not_implemented_without_raising(capsys):
    def stub(x):
        raise NotImplementedError

    result = run_check(_spec(), stub)
    assert result.status == "not implemented" and not result.passed
    out = capsys.readouterr().out
    assert "not implemented yet" in out and out.startswith(TODO)


def test_known_mistake_is_named_when_a_second_case_confirms_it():
    with pytest.raises(CheckFailed, match=r"mistake:  added two \(it gives exactly your answers, here and on golden case 'mixed'\)"):
        run_check(_spec(), lambda x: x + 2)


def test_a_mistake_matching_one_case_only_is_not_named():
    # x + 2 on the first case, but x * 2 elsewhere: the registered mistake fits one output, not the learner
    def once_like_the_mistake(x):
        return x + 2 if x.tolist() == [1, 2] else x * 2

    with pytest.raises(CheckFailed) as info:
        run_check(_spec(), once_like_the_mistake)
    assert "mistake:" not in str(info.value) and "add exactly one" in str(info.value)


def test_unknown_mistake_shows_expected_actual_and_hints():
    with pytest.raises(CheckFailed) as info:
        run_check(_spec(), lambda x: x * 0)
    msg = str(info.value)
    assert msg.startswith(FAIL) and "golden case 'small'" in msg and "expected" in msg and "got" in msg
    assert "add exactly one" in msg and "mistake:" not in msg


def test_describe_probes_run_after_a_mismatch():
    def describe(f):
        at_zero = f.learner(Case((torch.tensor([0]),)))
        return [f"at 0 you give {at_zero.tolist()}"]

    with pytest.raises(CheckFailed, match=r"what differs: at 0 you give \[0\]"):
        run_check(_spec(describe=describe, mistakes=()), lambda x: x * 0)


def test_mistake_found_only_on_random_case_reports_seed():
    # right on the golden cases, wrong whenever x has 0
    with pytest.raises(CheckFailed, match=r"random case \d+ \(seed 1234\)"):
        run_check(_spec(), lambda x: torch.where(x == 0, x, x + 1))


def test_crash_is_reported_with_the_input_and_the_cases_it_gets_right():
    def crashes_on_negatives(x):
        if (x < 0).any():
            raise KeyError("oops")
        return x + 1

    with pytest.raises(CheckFailed, match=r"(?s)raised KeyError.*add_one\(tensor\(\[-3, 5\].*right answer on 'small'"):
        run_check(_spec(), crashes_on_negatives)


def test_wrong_type_dtype_shape_are_each_reported():
    with pytest.raises(CheckFailed, match="right values, but a numpy.ndarray"):
        run_check(_spec(), lambda x: (x + 1).numpy())
    with pytest.raises(CheckFailed, match="right values, but dtype float32; expected int64"):
        run_check(_spec(), lambda x: (x + 1).float())
    with pytest.raises(CheckFailed, match=r"right values, but shape \(1, 2\); expected \(2,\)"):
        run_check(_spec(), lambda x: (x + 1)[None])
    with pytest.raises(CheckFailed, match="has dtype float32, expected int64"):
        run_check(_spec(), lambda x: (x + 1.5).float())


def test_a_function_mutating_its_input_is_told_so():
    def mutates(x):
        x += 1
        return x

    with pytest.raises(CheckFailed, match="your function changed its input `x`: it had its values changed in place"):
        run_check(_spec(), mutates)


def test_result_that_must_be_detached_is_checked():
    spec = _spec(reference=lambda x: x.float() + 1, detached=True, mistakes=())
    run_check(spec, lambda x: x.float() + 1)
    with pytest.raises(CheckFailed, match="still requires grad"):
        run_check(spec, lambda x: x.float().requires_grad_(True) + 1)


def _seeded_spec():
    def reference(v, generator):
        return torch.rand(v.shape, generator=generator) < 2.0  # always True: only the seeding is checked

    return CheckSpec(name="noisy", reference=reference, golden=[Case((torch.zeros(50), torch.Generator().manual_seed(3)))],
                     compare=lambda e, a: None)


def test_same_seed_must_give_the_same_result_and_another_seed_another():
    run_check(_seeded_spec(), lambda v, g: torch.rand(v.shape, generator=g))
    with pytest.raises(CheckFailed, match="same seed, different results"):
        run_check(_seeded_spec(), lambda v, g: torch.rand(v.shape))
    with pytest.raises(CheckFailed, match="different seeds, same results"):
        run_check(_seeded_spec(), lambda v, g: torch.rand(v.shape, generator=torch.Generator().manual_seed(0)))


def test_global_random_state_is_left_alone():
    before = torch.get_rng_state().clone()
    with pytest.raises(CheckFailed):
        run_check(_seeded_spec(), lambda v, g: torch.rand(v.shape))
    assert torch.equal(torch.get_rng_state(), before)


def test_not_a_function_is_a_clear_type_error():
    with pytest.raises(TypeError, match="pass it without"):
        run_check(_spec(), 3)


def test_failure_renders_without_a_traceback_and_still_raises():
    with pytest.raises(CheckFailed) as info:
        run_check(_spec(), lambda x: x + 2)
    lines = info.value._render_traceback_()
    assert FAIL in lines[0] and all("framework.py" not in line for line in lines)
    assert isinstance(info.value, AssertionError)


def test_result_displays_nothing_in_ipython():
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(CheckResult("x", "passed", 3))
    assert data == {}


def test_no_emoji_in_messages():
    for symbol in (PASS, TODO, FAIL):
        assert not (0x1F000 <= ord(symbol) <= 0x1FAFF) and ord(symbol) not in (0x2705, 0x274C, 0x23F3)


@pytest.mark.parametrize(
    "expected, actual, fragment",
    [
        (1.0, 1.0 + 1e-9, "expected 1.0"),
        ((1, 2), (1,), "should have 2 items"),
        (3, 3.5, "should be an int"),
        (3, 3.0, "right value, but a float"),
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


def test_localize_picks_the_tightest_explanation():
    wrong = torch.tensor([True, False, False, False])
    features = {"x < 0": torch.tensor([True, True, False, False]), "a tie": torch.tensor([True, False, False, False])}
    assert localize(wrong, features) == "only where a tie (every other position is right)"
    assert localize(torch.tensor([True, True]), {"never": torch.tensor([False, False])}) == "at every position"


# --- the warm-up check of lesson 00: every registered mistake is caught and named --------------

def test_snap_to_levels_check_passes_reference():
    assert checks.check_snap_to_levels(welcome.snap_to_levels_reference).passed


@pytest.mark.parametrize("mistake", welcome.SPEC.mistakes, ids=[m.name for m in welcome.SPEC.mistakes])
def test_snap_to_levels_check_names_each_classic_mistake(mistake):
    with pytest.raises(CheckFailed, match=f"mistake:  {mistake.name}"):
        checks.check_snap_to_levels(mistake.impl)


def test_compare_matches_an_infinite_expected_value_only_with_itself():
    """rtol * inf is inf: without care any finite answer would 'match' an expected inf."""
    from qedu.checks.framework import compare

    assert compare(float("inf"), float("inf"), rtol=1e-6) is None
    assert compare(float("inf"), 5.0, rtol=1e-6) is not None
    assert compare(torch.tensor([float("inf"), 1.0]), torch.tensor([3.0, 1.0]), rtol=1e-3) is not None
    assert compare(torch.tensor([float("inf"), 1.0]), torch.tensor([float("inf"), 1.0 + 1e-6]), rtol=1e-3) is None
