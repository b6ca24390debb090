#!/usr/bin/env python
"""Generate exercises/NN_slug.ipynb and solutions/NN_slug.ipynb from exercise_sources/NN_slug.py.

Each source is a jupytext "percent" script (cells start with ``# %%`` or ``# %% [markdown]``).
Inside code cells, solution code sits between two marker lines::

    def int_range(bits):
        ### BEGIN SOLUTION
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        ### END SOLUTION

The solutions notebook keeps the code and drops the markers; the exercises notebook replaces
each region by ``raise NotImplementedError(...)`` at the same indentation. Output is
deterministic (fixed cell ids, no outputs, minimal metadata), so the test suite can rebuild in
memory and compare byte for byte.

Usage:
    python scripts/build_exercises.py           # (re)write every generated notebook
    python scripts/build_exercises.py --check   # exit 1 and list stale or missing files
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
    """Return {"exercises": text, "solutions": text} for one source file."""
    nb = jupytext.reads(source.read_text(), fmt="py:percent")
    stem = source.stem
    out = {}
    for kind in ("exercises", "solutions"):
        cells = [nbformat.v4.new_markdown_cell(HEADER[kind].format(name=source.name, stem=stem))]
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                ex, sol = split_solution(cell.source, f"{source.name} cell {i + 1}")
                cells.append(nbformat.v4.new_code_cell(ex if kind == "exercises" else sol))
            elif cell.cell_type == "markdown":
                cells.append(nbformat.v4.new_markdown_cell(cell.source))
        for j, cell in enumerate(cells):
            cell["id"] = f"{kind[:3]}-{j:03d}"
            cell["metadata"] = {}
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


def targets(source: Path) -> dict[str, Path]:
    return {kind: ROOT / kind / f"{source.stem}.ipynb" for kind in ("exercises", "solutions")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale or missing files")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        built = build(source)
        for kind, path in targets(source).items():
            current = path.read_text() if path.exists() else None
            if current == built[kind]:
                continue
            if args.check:
                stale.append(path.relative_to(ROOT))
            else:
                path.parent.mkdir(exist_ok=True)
                path.write_text(built[kind])
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("Stale or missing generated notebooks (run `make exercises`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
