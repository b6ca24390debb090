"""The contract every exercise check keeps, as parametrized tests a test module adopts in one line.

    test_passes, test_stub, test_mistakes = check_contract({
        "int_range": (checks.check_int_range, INT_RANGE_SPEC, learner_style_solution),
        ...
    })

For each check: it passes qedu's reference (and any learner-style solutions given after the
spec), reports a stub that raises NotImplementedError as "not implemented yet" without raising,
and rejects every registered classic mistake with a CheckFailed that names it (confirmed on a second
probe) and gives its hint.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from qedu.checks.framework import CheckFailed


EXERCISE_SOURCES = Path(__file__).resolve().parent.parent / "exercise_sources"


def exercise_solutions(slug: str) -> dict:
    """The functions of ``exercise_sources/<slug>.py`` with their solutions, as a learner would write them.

    Only the file's imports and top-level ``def``s run (not its check cells), so the tests use
    the very code that the solutions notebook contains instead of a copy of it.
    """
    tree = ast.parse((EXERCISE_SOURCES / f"{slug}.py").read_text())
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    namespace: dict = {}
    exec(compile(ast.Module(body=kept, type_ignores=[]), f"exercise_sources/{slug}.py", "exec"), namespace)
    return {node.name: namespace[node.name] for node in kept if isinstance(node, ast.FunctionDef)}


def _stub(*args, **kwargs):
    raise NotImplementedError("Replace this line with your code.")


def check_contract(checks: dict):
    """``checks``: name -> (check function, CheckSpec, *correct solutions). Returns three tests."""
    names = list(checks)
    mistakes = [(name, m) for name, (_, spec, *_) in checks.items() for m in spec.mistakes]

    @pytest.mark.parametrize("name", names)
    def test_check_passes_the_reference(name, capsys):
        check, spec, *solutions = checks[name]
        for fn in (spec.reference, *solutions):
            assert check(fn).passed
        assert "✓" in capsys.readouterr().out

    @pytest.mark.parametrize("name", names)
    def test_check_says_not_implemented_for_a_stub(name, capsys):
        result = checks[name][0](_stub)
        assert result.status == "not implemented" and not result.passed
        assert "not implemented yet" in capsys.readouterr().out

    @pytest.mark.parametrize("name, mistake", mistakes, ids=[f"{n}: {m.name}" for n, m in mistakes])
    def test_check_names_each_classic_mistake(name, mistake):
        with pytest.raises(CheckFailed) as info:
            checks[name][0](mistake.impl)
        message = str(info.value)
        assert f"mistake:  {mistake.name} (" in message and f"fix:      {mistake.hint}" in message, message

    return test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake
