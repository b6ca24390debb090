"""Every exercise check against wrong answers written the way learners write them (tests/wrong_answers/).

For each wrong answer: the check rejects it, and its message carries the recorded diagnosis; a
registered mistake is named only when it is the one made. Each correct alternative (loops,
numpy, float32, torch built-ins) passes. The per-set counts: ``python -m tests.wrong_answers``.
"""
from __future__ import annotations

import os

import pytest

from tests.wrong_answers import all_sets

SETS = all_sets()
WRONG = [(s, a) for s in SETS for a in s.wrongs]
RIGHT = [(s, a) for s in SETS for a in s.rights]


@pytest.fixture(autouse=True)
def _probe_errors_raise(monkeypatch):
    """A describe probe that crashes on a learner's answer is a bug in the check: let it show."""
    from qedu.checks import framework

    monkeypatch.setattr(framework, "RAISE_PROBE_ERRORS", True)


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory):
    """The sensitivity check trains the digits MLP once, in a temporary cache shared by the session."""
    old = os.environ.get("QEDU_CACHE_DIR")
    os.environ["QEDU_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "qedu-models")
    yield
    if old is None:
        os.environ.pop("QEDU_CACHE_DIR")
    else:
        os.environ["QEDU_CACHE_DIR"] = old


@pytest.mark.parametrize("answers, answer", WRONG, ids=[f"{s.name}-{a.label}" for s, a in WRONG])
def test_wrong_answer_is_rejected_with_its_diagnosis(answers, answer):
    outcome = answers.run(answer)
    assert outcome.rejected, f"{answer.label} passed the check"
    assert not outcome.wrongly_named, f"{answer.label}: a mistake was named that was not made:\n{outcome.message}"
    assert outcome.diagnosed, f"{answer.label}: expected {answer.diagnosis!r} in\n{outcome.message}"


@pytest.mark.parametrize("answers, answer", RIGHT, ids=[f"{s.name}-{a.label}" for s, a in RIGHT])
def test_correct_alternative_is_accepted(answers, answer):
    outcome = answers.run(answer)
    assert not outcome.rejected, f"{answer.label} was rejected:\n{outcome.message}"


def test_every_exercise_function_has_enough_wrong_answers():
    core = {"int_range", "qparams", "quantize", "dequantize", "per_channel", "stochastic_round", "pack4",
            "round_to_exmy", "minmax_observer", "update_loss_scale", "stochastic_round_bf16", "blockwise_absmax",
            "clip_rate", "fgsm"}
    wrongs, rights = {}, {}
    for s in SETS:
        wrongs[s.name] = wrongs.get(s.name, 0) + len(s.wrongs)
        rights[s.name] = rights.get(s.name, 0) + len(s.rights)
        assert len({a.label for a in s.answers}) == len(s.answers)
    for name, n in wrongs.items():
        need = 10 if name in core else 5
        assert n >= need, f"{name}: {n} wrong answers, need {need}"
        assert rights[name], f"{name}: no correct alternative"


def test_every_check_has_an_answer_set():
    from qedu import checks

    names = {n for n in dir(checks) if n.startswith("check_") and callable(getattr(checks, n))}
    covered = {s.check.__name__ for s in SETS}
    assert names <= covered, f"checks without wrong answers: {sorted(names - covered)}"
