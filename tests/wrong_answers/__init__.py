"""Wrong answers written the way learners write them, each with the diagnosis its check must give.

Every exercise function has a :class:`AnswerSet`: wrong answers (``@S.wrong("diagnosis")``) and
correct answers in other styles (``@S.right``). ``diagnosis`` is a fragment the failure message
must contain. When it is (part of) the name of one of the check's registered mistakes, the
message must name exactly that mistake; otherwise the message must name *no* mistake (a
described difference, never a wrongly named mistake).

``python -m tests.wrong_answers`` prints the table of counts (total / rejected / diagnosed /
wrongly named, and correct alternatives accepted) per exercise set.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from typing import Callable

from qedu.checks.framework import CheckFailed, CheckSpec

NAMED = re.compile(r"^  mistake:  (.*) \(it gives exactly your answers", re.M)


@dataclass
class Answer:
    fn: Callable
    diagnosis: str | None  # None: a correct answer
    label: str


@dataclass
class Outcome:
    rejected: bool
    diagnosed: bool
    wrongly_named: bool
    message: str


@dataclass
class AnswerSet:
    """The wrong and right answers for one check."""

    name: str
    check: Callable
    spec: CheckSpec | Callable[[], CheckSpec]
    lesson: str
    answers: list = field(default_factory=list)

    def wrong(self, diagnosis: str):
        def register(fn):
            self.answers.append(Answer(fn, diagnosis, fn.__name__))
            return fn
        return register

    def right(self, fn):
        self.answers.append(Answer(fn, None, fn.__name__))
        return fn

    @property
    def wrongs(self):
        return [a for a in self.answers if a.diagnosis is not None]

    @property
    def rights(self):
        return [a for a in self.answers if a.diagnosis is None]

    def mistake_names(self) -> set[str]:
        spec = self.spec() if callable(self.spec) and not isinstance(self.spec, CheckSpec) else self.spec
        return {m.name for m in spec.mistakes}

    def run(self, answer: Answer) -> Outcome:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                result = self.check(answer.fn)
            except CheckFailed as err:
                message = str(err)
            else:
                return Outcome(False, False, False, f"not rejected: {result!r}")
        if answer.diagnosis is None:
            return Outcome(True, False, False, message)
        named = NAMED.findall(message)
        expected_names = [m for m in self.mistake_names() if answer.diagnosis in m]
        wrongly = bool(named) and named[0] not in expected_names
        return Outcome(True, answer.diagnosis in message and not wrongly, wrongly, message)


def all_sets() -> list[AnswerSet]:
    from tests.wrong_answers import (calibration, deploy, evaluation, formats, heldout, heldout2, lowprec, ptq,  # noqa: F401
                                     qat, quantizers, training, welcome)
    sets = []
    for module in (welcome, formats, quantizers, calibration, ptq, qat, training, evaluation, heldout, heldout2, lowprec,
                   deploy):
        sets += [v for v in vars(module).values() if isinstance(v, AnswerSet)]
    return sets
