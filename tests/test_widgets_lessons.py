"""Issue 15 items 7 and 8, held on the lesson sources: tables are real tables, crowded plots are small
multiples, and no cell dressed as a benchmark drives a widget. (The notebooks themselves run in
tests/test_notebooks.py and the browser tests; this only reads their code cells.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parent.parent / "lessons"


def code_cell(lesson: str, marker: str) -> str:
    """The one code cell of ``lesson`` that contains ``marker``."""
    cells = json.loads((LESSONS / f"{lesson}.ipynb").read_text())["cells"]
    hits = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(hits) == 1, f"{lesson}: {len(hits)} code cells contain {marker!r}"
    return hits[0]


@pytest.mark.parametrize("lesson, marker", [
    ("09_data_quality_and_security", "RangeMonitor(deployed"),  # the monitor's verdicts wrapped mid-word
    ("04_post_training_quantization", '"W+A per-ch MSE"'),  # the results table
])
def test_tables_are_markdown_not_printed(lesson, marker):
    source = code_cell(lesson, marker)
    assert "display(Markdown(" in source and "|---" in source and "print(" not in source


def test_lesson_03_shows_a_method_by_outlier_pivot_not_the_long_form():
    source = code_cell("03_calibration", "outliers = AblationTable")
    assert 'outliers.pivot("method", "outlier"' in source and "to_markdown" not in source


@pytest.mark.parametrize("lesson, marker, panels", [
    ("09_data_quality_and_security", "attack_table(", "plt.subplots(1, len(targets)"),  # 8 lines on one plot before
    ("02_uniform_quantization", "normalised = w.reshape(-1, 64)", "plt.subplots(2, 1"),  # 31 vertical lines before
])
def test_crowded_plots_are_small_multiples(lesson, marker, panels):
    source = code_cell(lesson, marker)
    assert panels in source and "for ax, " in source


def test_lesson_06_embeds_results_with_their_origin_and_no_widget_timing_cell():
    cells = json.loads((LESSONS / "06_mixed_precision_training.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert not any("last_update_ms" in c for c in code)  # a cell that looked like a benchmark but drove the widget
    assert not any('results_markdown("mixed_precision' in c for c in code)  # H1 headings, empty columns, 3 footnotes
    embeds = [c for c in code if "mixed_precision_results(" in c and "import" not in c]
    assert len(embeds) == 2 and sum("footnote=False" in c for c in embeds) == 1
