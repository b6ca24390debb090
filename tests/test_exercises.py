"""Exercises and solutions come from one source, stay in sync, and never leak answers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "exercise_sources").glob("[0-9][0-9]_*.py"))

spec = importlib.util.spec_from_file_location("build_exercises", ROOT / "scripts" / "build_exercises.py")
build_exercises = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_exercises)


def _ids(paths):
    return [p.stem for p in paths]


def _code(nb_text: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb_text)["cells"] if c["cell_type"] == "code"]


def _solution_lines(source: Path) -> list[str]:
    """The non-trivial lines inside the source's solution regions."""
    lines, inside = [], False
    for line in source.read_text().splitlines():
        if line.strip() == build_exercises.BEGIN:
            inside = True
        elif line.strip() == build_exercises.END:
            inside = False
        elif inside and len(line.strip()) > 12 and not line.strip().startswith(("#", "return x", "pass")):
            lines.append(line.strip())
    return lines


def test_every_source_has_both_notebooks_and_nothing_else_is_generated():
    stems = {p.stem for p in SOURCES}
    assert stems, "no exercise sources found"
    for kind in ("exercises", "solutions"):
        assert {p.stem for p in (ROOT / kind).glob("*.ipynb")} == stems, f"{kind}/ does not match exercise_sources/"


def test_generated_notebooks_are_up_to_date():
    assert build_exercises.main(["--check"]) == 0, "run `make exercises` and commit the result"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_no_solution_leaks_into_exercises(source):
    exercise_code = "\n".join(_code((ROOT / "exercises" / f"{source.stem}.ipynb").read_text()))
    solution_code = "\n".join(_code((ROOT / "solutions" / f"{source.stem}.ipynb").read_text()))
    lines = _solution_lines(source)
    assert lines, "a source needs at least one solution region"
    leaked = [line for line in lines if line in exercise_code]
    assert not leaked, f"solution lines found in exercises/{source.stem}.ipynb: {leaked[:3]}"
    assert all(line in solution_code for line in lines)
    assert "### BEGIN SOLUTION" not in exercise_code + solution_code
    n_regions = source.read_text().count(build_exercises.BEGIN)
    assert exercise_code.count(build_exercises.STUB) == n_regions


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_exercise_notebook_runs_and_checks_say_not_implemented(source):
    path = ROOT / "exercises" / f"{source.stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    n_checks = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell raised {errors[0].ename}: {errors[0].evalue}\n{cell.source}"
        if "checks.check_" in cell.source:
            n_checks += 1
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert "not implemented yet" in text, f"check cell did not report 'not implemented yet':\n{cell.source}\n{text}"
    assert n_checks >= 1


@pytest.mark.parametrize(
    "code, problem",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "without a matching"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without a ### BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
    ],
    ids=["unclosed", "end-without-begin", "nested"],
)
def test_malformed_markers_are_reported(code, problem):
    with pytest.raises(ValueError, match=problem):
        build_exercises.split_solution(code, "test cell")


def test_split_keeps_indentation_and_replaces_region():
    code = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    exercise, solution = build_exercises.split_solution(code, "cell")
    assert exercise == f"def f(x):\n    y = 1\n    {build_exercises.STUB}"
    assert solution == "def f(x):\n    y = 1\n    return x + y"
