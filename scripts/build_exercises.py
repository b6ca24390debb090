#!/usr/bin/env python
"""Generate exercises/, solutions/ and nbgrader/source/ notebooks from exercise_sources/NN_slug.py.

Each source is a jupytext "percent" script (cells start with ``# %%`` or ``# %% [markdown]``).
Inside code cells, solution code sits between two marker lines::

    def int_range(bits):
        ### BEGIN SOLUTION
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        ### END SOLUTION

The solutions notebook keeps the code and drops the markers; the exercises notebook replaces
each region by ``raise NotImplementedError(...)`` at the same indentation.

The third output, ``nbgrader/source/NN_slug/NN_slug.ipynb``, is the teacher's nbgrader *source*
notebook (``nbgrader/`` is the course directory; its ``nbgrader_config.py`` makes nbgrader's
stub the same ``raise NotImplementedError(...)`` line):

* a code cell with solution regions -> a solution cell (markers kept: nbgrader strips them);
* a check cell (exactly one line ``checks.check_<name>(<fn>)``) -> a locked autograder cell worth
  ``points`` (1 unless the source cell says e.g. ``# %% points=2``); it asserts that the check
  passed, so a wrong answer (``CheckFailed``) and an unanswered task ("not implemented yet", which
  only prints) both score 0;
* every other cell (markdown, set-up, demonstrations) -> locked read-only.

Output is deterministic (fixed cell ids, no outputs, minimal metadata), so the test suite can
rebuild in memory and compare byte for byte.

Usage:
    python scripts/build_exercises.py           # (re)write every generated notebook
    python scripts/build_exercises.py --check   # exit 1 and list stale, missing or orphaned files
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "exercise_sources"
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("Replace this line with your code.")'
_MARKER = re.compile(r"^(\s*)### (BEGIN|END) SOLUTION\s*$")
_CHECK = re.compile(r"^checks\.(check_\w+)\((\w+)\)$")
_DEF = re.compile(r"^def (\w+)\(", re.M)
KINDS = ("exercises", "solutions", "nbgrader")
NBGRADER = ROOT / "nbgrader"

HEADER = {
    "exercises": (
        "> **Exercises.** Replace each `raise NotImplementedError(...)` with your code, then run the check "
        "below it. Generated from `exercise_sources/{name}` - teachers edit that file and run "
        "`make exercises`, not this notebook. The worked answers are in `solutions/{stem}.ipynb`."
    ),
    "solutions": (
        "> **Solutions.** Generated from `exercise_sources/{name}` (edit that, then `make exercises`). "
        "Try `exercises/{stem}.ipynb` first."
    ),
    "nbgrader": (
        "> **Exercises (graded).** Replace each `raise NotImplementedError(...)` with your code, then run "
        "the check below it. Each check cell is worth points: it passes only when the check passes. "
        "Teachers: this nbgrader source is generated from `exercise_sources/{name}`; edit that and run "
        "`make exercises`."
    ),
}


def split_solution(code: str, where: str) -> tuple[str, str]:
    """Return (exercise_code, solution_code) for one code cell."""
    exercise, solution = [], []
    inside = False
    for lineno, line in enumerate(code.splitlines(), 1):
        m = _MARKER.match(line)
        if m and m.group(2) == "BEGIN":
            if inside:
                raise ValueError(f"{where}, line {lineno}: {BEGIN} inside another solution region.")
            inside = True
            exercise.append(f"{m.group(1)}{STUB}")
            continue
        if m and m.group(2) == "END":
            if not inside:
                raise ValueError(f"{where}, line {lineno}: {END} without a {BEGIN} before it.")
            inside = False
            continue
        solution.append(line)
        if not inside:
            exercise.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} without a matching {END}.")
    return "\n".join(exercise), "\n".join(solution)


def build(source: Path) -> dict[str, str]:
    """Return {"exercises": text, "solutions": text, "nbgrader": text} for one source file."""
    nb = jupytext.reads(source.read_text(), fmt="py:percent")
    stem = source.stem
    out = {}
    for kind in KINDS:
        cells = [nbformat.v4.new_markdown_cell(HEADER[kind].format(name=source.name, stem=stem))]
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                ex, sol = split_solution(cell.source, f"{source.name} cell {i + 1}")
                cells.append(nbformat.v4.new_code_cell({"exercises": ex, "solutions": sol}.get(kind, cell.source)))
            elif cell.cell_type == "markdown":
                cells.append(nbformat.v4.new_markdown_cell(cell.source))
            else:
                continue
            cells[-1]["metadata"] = dict(cell.metadata)
        for j, cell in enumerate(cells):
            cell["id"] = f"{kind[:3]}-{j:03d}"
            if kind == "nbgrader":
                mark_for_nbgrader(cell, j, source.name)
            else:
                cell["metadata"] = {}
        if kind == "nbgrader":
            grade_ids = [c.metadata["nbgrader"]["grade_id"] for c in cells]
            dupes = sorted({g for g in grade_ids if grade_ids.count(g) > 1})
            if dupes:
                raise ValueError(f"{source.name}: two nbgrader cells share the grade_id(s) {dupes}; "
                                 "give each task's function its own name.")
        book = nbformat.v4.new_notebook(
            cells=cells,
            metadata={
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
            },
        )
        book.nbformat_minor = 5
        nbformat.validate(book)
        out[kind] = nbformat.writes(book) + "\n"
    return out


def mark_for_nbgrader(cell, j: int, where: str) -> None:
    """Give cell ``j`` of the nbgrader notebook nbgrader's metadata (schema 3), in place; a check
    cell's source becomes its autograder form. The source cell's metadata may say ``points``."""
    points = cell["metadata"].get("points", 1)
    meta = {"solution": False, "grade": False, "locked": True, "grade_id": f"cell-{j:03d}", "schema_version": 3}
    if cell.cell_type == "code" and BEGIN in cell.source:
        names = _DEF.findall(cell.source)
        meta.update(solution=True, locked=False, grade_id=names[0] if names else f"answer-{j:03d}")
    elif cell.cell_type == "code" and "checks.check_" in cell.source:
        m = _CHECK.match(cell.source.strip())
        if not m:
            raise ValueError(f"{where}: a check cell must be exactly one line `checks.check_<name>(<fn>)`, "
                             f"got {cell.source!r}")
        if not (isinstance(points, int) and points > 0):
            raise ValueError(f"{where}: points={points!r} on a check cell; give a positive integer, e.g. `# %% points=2`.")
        check, fn = m.groups()
        cell.source = (f"# Autograded ({points} point{'s' if points > 1 else ''}): a wrong answer raises CheckFailed; "
                       "an unanswered task fails the assert.\n"
                       f"assert {cell.source.strip()}.passed, \"{fn} is not answered yet\"")
        meta.update(grade=True, grade_id=check, points=points)
    cell["metadata"] = {"nbgrader": meta}


def targets(source: Path) -> dict[str, Path]:
    paths = {kind: ROOT / kind / f"{source.stem}.ipynb" for kind in ("exercises", "solutions")}
    paths["nbgrader"] = NBGRADER / "source" / source.stem / f"{source.stem}.ipynb"
    return paths


def orphans(sources: list[Path]) -> list[Path]:
    """Generated notebooks whose source is gone."""
    stems = {s.stem for s in sources}
    found = [p for kind in ("exercises", "solutions") for p in (ROOT / kind).glob("*.ipynb")]
    found += list((NBGRADER / "source").glob("*/*.ipynb"))
    return sorted(p for p in found if p.stem not in stems or (p.parent.name != p.stem and p.parent.parent.name == "source"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale or missing files")
    args = parser.parse_args(argv)
    stale = []
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    for source in sources:
        built = build(source)
        for kind, path in targets(source).items():
            current = path.read_text() if path.exists() else None
            if current == built[kind]:
                continue
            if args.check:
                stale.append(path.relative_to(ROOT))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(built[kind])
                print(f"wrote {path.relative_to(ROOT)}")
    for path in orphans(sources):
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.unlink()
            if path.parent.parent.name == "source" and not any(path.parent.iterdir()):
                path.parent.rmdir()
            print(f"removed {path.relative_to(ROOT)} (its source is gone)")
    if stale:
        print("Stale, missing or orphaned generated notebooks (run `make exercises`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
