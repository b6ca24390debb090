"""nbgrader 0.9.6 grades the generated source notebooks: a headless round trip in a temporary course.

The teacher's commands from README's "For teachers" section, in the same order: `nbgrader db
assignment add`, `nbgrader db student import`, `nbgrader generate_assignment`, then three
submissions through `nbgrader autograde`, `nbgrader generate_feedback` and `nbgrader export`:

* alice hands in the worked solution            -> full marks;
* bob makes a classic mistake in one answer    -> loses exactly that check's points;
* carol hands in the released notebook as is   -> 0 (an unanswered task scores nothing).
"""
from __future__ import annotations

import csv
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is the `teacher` extra: pip install -e '.[teacher]'")
from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.nbgraderformat import MetadataValidator  # noqa: E402
from nbgrader.preprocessors import ClearSolutions  # noqa: E402
from traitlets.config import Config  # noqa: E402

from tests.test_exercises import SOURCES, _solution_lines, build_exercises  # noqa: E402
from tests.wrong_answers import quantizers as wrong02  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "nbgrader"
LESSON = "02_uniform_quantization"  # six small checks: autogrades in seconds
MISTAKE = wrong02.dq_no_zp  # "forgot the zero point", as learners write it
MISTAKE_TASK = "dequantize"


def _nbgrader(course: Path, *args: str) -> str:
    env = dict(os.environ)
    # nbgrader runs the `alembic` console script of its own environment
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")  # the kernels import this qedu
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _answer(source: str) -> str:
    """A solution cell as a student hands it in: the code, without nbgrader's markers."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in (build_exercises.BEGIN, build_exercises.END))


def _wrong(task: str) -> str:
    """The classic mistake's source, renamed to the task's function."""
    code = inspect.getsource(MISTAKE)
    code = "\n".join(line for line in code.splitlines() if not line.startswith("@"))
    return code.replace(f"def {MISTAKE.__name__}(", f"def {task}(")


def _submit(course: Path, student: str, release: nbformat.NotebookNode, answers: dict[str, str]) -> None:
    nb = nbformat.from_dict(release)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    folder = course / "submitted" / student / LESSON
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{LESSON}.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    shutil.copytree(COURSE / "source" / LESSON, course / "source" / LESSON)
    (course / "students.csv").write_text("id,first_name,last_name\nalice,Alice,A\nbob,Bob,B\ncarol,Carol,C\n")
    _nbgrader(course, "db", "assignment", "add", LESSON)
    _nbgrader(course, "db", "student", "import", "students.csv")
    _nbgrader(course, "generate_assignment", LESSON)
    release = nbformat.read(course / "release" / LESSON / f"{LESSON}.ipynb", as_version=4)
    source = nbformat.read(course / "source" / LESSON / f"{LESSON}.ipynb", as_version=4)
    solutions = {c.metadata.nbgrader["grade_id"]: _answer(c.source) for c in source.cells if c.metadata.nbgrader["solution"]}
    assert MISTAKE_TASK in solutions
    _submit(course, "alice", release, solutions)
    _submit(course, "bob", release, {**solutions, MISTAKE_TASK: _wrong(MISTAKE_TASK)})
    _submit(course, "carol", release, {})
    _nbgrader(course, "autograde", LESSON)
    _nbgrader(course, "generate_feedback", LESSON)
    _nbgrader(course, "export", "--to", "grades.csv")
    points = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader["points"] for c in source.cells if c.metadata.nbgrader["grade"]}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id="qedu") as gb:
        scores = {s: {g.name: g.score for g in gb.find_submission_notebook(LESSON, LESSON, s).grades}
                  for s in ("alice", "bob", "carol")}
    exported = {row["student_id"]: row for row in csv.DictReader((course / "grades.csv").open())}
    return {"course": course, "release": release, "source": source, "points": points, "scores": scores, "exported": exported}


def test_the_solution_scores_full_marks(graded):
    assert graded["points"] and sum(graded["points"].values()) >= 6
    assert graded["scores"]["alice"] == {k: float(v) for k, v in graded["points"].items()}


def test_a_classic_mistake_loses_exactly_that_checks_points(graded):
    expected = {k: float(v) for k, v in graded["points"].items()}
    expected[f"check_{MISTAKE_TASK}"] = 0.0
    assert graded["scores"]["bob"] == expected
    assert graded["points"][f"check_{MISTAKE_TASK}"] > 0


def test_an_unanswered_notebook_scores_nothing(graded):
    """The checks only print "not implemented yet" for a stub; the autograder cell's assert makes it 0."""
    assert graded["scores"]["carol"] == {k: 0.0 for k in graded["points"]}


def test_exported_grades_match_the_gradebook(graded):
    total = float(sum(graded["points"].values()))
    for student in ("alice", "bob", "carol"):
        row = graded["exported"][student]
        assert float(row["max_score"]) == total
        assert float(row["score"]) == sum(graded["scores"][student].values())


def test_feedback_shows_the_score_and_the_checks_message(graded):
    total = sum(graded["points"].values())
    lost = graded["points"][f"check_{MISTAKE_TASK}"]
    page = (graded["course"] / "feedback" / "bob" / LESSON / f"{LESSON}.html").read_text()
    assert f"Score: {float(total - lost)} / {float(total)}" in page
    assert f"{MISTAKE_TASK}: wrong answer" in page, "the student should see why the check failed"


def test_the_released_notebook_has_no_solution_and_matches_exercises(graded):
    release_code = "\n".join(c.source for c in graded["release"].cells if c.cell_type == "code")
    source_file = ROOT / "exercise_sources" / f"{LESSON}.py"
    leaked = [line for line in _solution_lines(source_file) if line in release_code]
    assert not leaked, f"solution lines in the released notebook: {leaked[:3]}"
    assert build_exercises.BEGIN not in release_code
    # nbgrader's stub is the exercises' stub, in the same cells
    exercises = nbformat.read(ROOT / "exercises" / f"{LESSON}.ipynb", as_version=4)
    released_answers = [c.source for c in graded["release"].cells if c.metadata.nbgrader.get("solution")]
    exercise_answers = [c.source for c in exercises.cells if build_exercises.STUB in c.source]
    assert released_answers == exercise_answers


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_nbgrader_validates_and_clears_every_solution(source):
    """nbgrader's metadata validator accepts every generated notebook, and its ClearSolutions, with the course's config, on every generated source notebook:
    no solution line survives and every region becomes the exercises' stub."""
    config = Config()
    exec((COURSE / "nbgrader_config.py").read_text(), {"get_config": lambda: config})
    nb = nbformat.read(COURSE / "source" / source.stem / f"{source.stem}.ipynb", as_version=4)
    MetadataValidator().validate_nb(nb)  # nbgrader's own schema-3 check (raises on a bad cell)
    released, _ = ClearSolutions(config=config).preprocess(nb, {})
    code = "\n".join(c.source for c in released.cells if c.cell_type == "code")
    leaked = [line for line in _solution_lines(source) if line in code]
    assert not leaked, f"solution lines survive nbgrader's ClearSolutions: {leaked[:3]}"
    assert code.count(build_exercises.STUB) == source.read_text().count(build_exercises.BEGIN)
