"""Promises every notebook in git keeps: no outputs, small, reproducible first cell, map in step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qedu.curriculum import LESSONS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIRS = ("lessons", "exercises", "solutions")
ALL_NOTEBOOKS = sorted(p for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))
LESSON_NOTEBOOKS = sorted((ROOT / "lessons").glob("*.ipynb"))


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _code_cells(path: Path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert (ROOT / "lessons" / "00_welcome.ipynb").exists()
    assert len(ALL_NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_outputs_are_stripped(path):
    nb = json.loads(path.read_text())
    with_outputs = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("outputs")]
    counted = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count")]
    assert not with_outputs, f"cells {with_outputs} store outputs: run `make strip`"
    assert not counted, f"cells {counted} store execution counts: run `make strip`"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, f"noisy metadata {sorted(nb['metadata'])}: run `make strip`"
    for i, cell in enumerate(nb["cells"]):
        assert set(cell.get("metadata", {})) <= {"tags"}, f"cell {i} has metadata {cell['metadata']}: run `make strip`"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebooks_stay_small(path):
    assert path.stat().st_size < 100_000, f"{path.name} is {path.stat().st_size} bytes; move logic into qedu"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_first_code_cell_imports_qedu_and_seeds(path):
    cells = _code_cells(path)
    source = "".join(cells[0]["source"])
    assert "qedu.setup(seed=0)" in source, "the first code cell must call qedu.setup(seed=0)"
    assert "import *" not in "".join("".join(c["source"]) for c in cells), "no star imports in notebooks"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_no_downloads_in_notebooks(path):
    text = path.read_text()
    for forbidden in ("urlretrieve", "requests.get", "wget ", "curl ", "fetch_openml", "hf_hub_download", "from_pretrained("):
        assert forbidden not in text, f"{path.name} mentions {forbidden!r}: lessons must run offline"


def test_lesson_map_matches_files():
    on_disk = {p.stem for p in LESSON_NOTEBOOKS}
    ready = {lesson.slug for lesson in LESSONS if lesson.ready}
    assert ready == on_disk, f"ready in qedu.curriculum but missing: {ready - on_disk}; present but marked coming: {on_disk - ready}"


def test_lesson_slugs_are_the_published_map():
    assert [lesson.slug[:2] for lesson in LESSONS] == [f"{i:02d}" for i in range(13)]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_no_output_markers_that_check_nothing(path):
    # With outputs stripped, nbval has nothing to compare a marked cell with: the marker would
    # promise a check that never happens. Test printed numbers through qedu's functions instead.
    assert "NBVAL_CHECK_OUTPUT" not in path.read_text(), "remove # NBVAL_CHECK_OUTPUT (see CONTRIBUTING.md)"
