"""Exercises and solutions come from one source, stay in sync, and never leak answers."""
from __future__ import annotations

import importlib.util
import json
import re
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
    nbgrader_sources = ROOT / "nbgrader" / "source"
    assert {p.name for p in nbgrader_sources.iterdir()} == stems, "nbgrader/source/ does not match exercise_sources/"
    for stem in stems:
        assert [p.name for p in (nbgrader_sources / stem).iterdir()] == [f"{stem}.ipynb"]


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
def test_nbgrader_source_marks_every_cell(source):
    """nbgrader/source/NN_slug/NN_slug.ipynb: solution cells hold the solution regions, each check is a
    locked autograder cell with points that asserts the check passed, everything else is locked."""
    nb = nbformat.read(ROOT / "nbgrader" / "source" / source.stem / f"{source.stem}.ipynb", as_version=4)
    metas = [c.metadata["nbgrader"] for c in nb.cells]
    assert all(m["schema_version"] == 3 for m in metas)
    grade_ids = [m["grade_id"] for m in metas]
    assert len(set(grade_ids)) == len(grade_ids), "grade_ids must be unique"
    answers, graded = [], []
    for cell, m in zip(nb.cells, metas):
        if m["solution"]:
            assert cell.cell_type == "code" and not m["locked"] and not m["grade"]
            assert build_exercises.BEGIN in cell.source and build_exercises.END in cell.source
            assert re.search(rf"^def {m['grade_id']}\(", cell.source, re.M), "a solution cell is named by its function"
            answers.append(m["grade_id"])
        elif m["grade"]:
            assert cell.cell_type == "code" and m["locked"] and isinstance(m["points"], int) and m["points"] > 0
            fn = re.fullmatch(r"# Autograded .*\nassert checks\.check_\w+\((\w+)\)\.passed, \"\1 is not answered yet\"",
                              cell.source)
            assert fn, f"an autograder cell must assert that its check passed:\n{cell.source}"
            graded.append(fn.group(1))
        else:
            assert m["locked"], f"cell {m['grade_id']} should be read-only"
            assert build_exercises.BEGIN not in cell.source
    assert answers and set(answers) <= set(graded), "every answer has an autograder cell"
    assert len(graded) == len(re.findall(r"^checks\.check_", source.read_text(), re.M))
    solution_code = "\n".join(c.source for c in nb.cells if c.metadata["nbgrader"]["solution"])
    assert all(line in solution_code for line in _solution_lines(source))


def test_nbgrader_points_come_from_the_source_and_bad_check_cells_are_reported(tmp_path):
    source = tmp_path / "99_demo.py"
    source.write_text("# %%\nfrom qedu import checks\n\n# %%\ndef f(x):\n    ### BEGIN SOLUTION\n    return x\n"
                      "    ### END SOLUTION\n\n# %% points=3\nchecks.check_f(f)\n")
    nb = json.loads(build_exercises.build(source)["nbgrader"])
    check = next(c for c in nb["cells"] if c["metadata"]["nbgrader"]["grade"])
    assert check["metadata"]["nbgrader"]["points"] == 3 and check["metadata"]["nbgrader"]["grade_id"] == "check_f"
    assert "".join(check["source"]).endswith('assert checks.check_f(f).passed, "f is not answered yet"')
    source.write_text(source.read_text().replace("checks.check_f(f)", "print(1); checks.check_f(f)"))
    with pytest.raises(ValueError, match="exactly one line"):
        build_exercises.build(source)
    answer = "# %%\ndef f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\n"
    source.write_text(source.read_text().replace("print(1); ", "").replace(answer, answer + answer))
    with pytest.raises(ValueError, match="share the grade_id"):
        build_exercises.build(source)


def test_orphaned_generated_notebooks_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(build_exercises, "ROOT", tmp_path)
    monkeypatch.setattr(build_exercises, "NBGRADER", tmp_path / "nbgrader")
    for rel in ("exercises/01_a.ipynb", "solutions/02_gone.ipynb", "nbgrader/source/01_a/01_a.ipynb",
                "nbgrader/source/03_gone/03_gone.ipynb", "nbgrader/source/01_a/01_b.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in build_exercises.orphans([Path("01_a.py")])]
    assert found == ["nbgrader/source/01_a/01_b.ipynb", "nbgrader/source/03_gone/03_gone.ipynb", "solutions/02_gone.ipynb"]


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
