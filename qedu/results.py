"""Results measured by the scripts in ``benchmarks/``, for lessons that show them.

Some tables take minutes to measure (multi-seed ablations, latency sweeps), too long for a
lesson cell. The benchmark scripts write them to ``benchmarks/results/NAME.json`` and the
lesson loads them with :func:`load_results`, saying where they came from.

The folder is ``$QEDU_RESULTS_DIR`` if set, else the copy that ships inside the installed package
(a wheel: ``qedu/_bundle/results``), else the checkout's ``benchmarks/results`` (a clone or an
editable install). It never depends on the folder a notebook runs in.

>>> 'machine' in load_results("ptq_ablation")
True
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from qedu.bundle import bundle_path

__all__ = ["results_dir", "load_results", "results_markdown", "lesson_performance_table"]


def results_dir() -> Path:
    """The results folder: ``$QEDU_RESULTS_DIR``, else the installed copy, else the checkout's.

    Raises:
        FileNotFoundError: ``$QEDU_RESULTS_DIR`` names no folder, or qedu's copy is missing.
    """
    override = os.environ.get("QEDU_RESULTS_DIR")
    if override:
        if not Path(override).is_dir():
            raise FileNotFoundError(
                f"QEDU_RESULTS_DIR={override!r} is not a folder: point it at a copy of benchmarks/results, "
                "or unset it to use the tables that ship with qedu."
            )
        return Path(override)
    return bundle_path("results")


def _path(name, suffix: str) -> Path:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a results file name such as 'ptq_ablation', got {name!r}.")
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a bare file name in the results folder such as 'ptq_ablation', got {name!r}.")
    path = results_dir() / f"{name.removesuffix(suffix)}{suffix}"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob(f"*{suffix}"))
        raise FileNotFoundError(
            f"{path} does not exist; available: {available}. Each file is written by a script in "
            "benchmarks/ (see its docstring), e.g. `python benchmarks/ptq.py`."
        )
    return path


def load_results(name: str) -> dict:
    """The JSON a benchmark wrote as ``benchmarks/results/<name>.json``.

    Raises:
        TypeError: ``name`` is not a string.
        FileNotFoundError: naming the file and listing the ones there are.
    """
    return json.loads(_path(name, ".json").read_text())


def results_markdown(name: str) -> str:
    """The markdown table a benchmark wrote as ``benchmarks/results/<name>.md``."""
    return _path(name, ".md").read_text()


def lesson_performance_table() -> str:
    """One row per lesson from the widget, browser-latency and lesson-run results (README's table).

    Targets (issue "benchmarks"): widget update <= 50 ms for histogram views and <= 300 ms where
    a model is re-evaluated; each lesson <= 60 s.
    """
    widgets = load_results("widgets")["widgets"]
    browser = load_results("browser_latency")["lessons"]
    lessons = load_results("lessons")["lessons"]
    from qedu.curriculum import LESSONS

    rows = ["| lesson | widget update, kernel (median ms) | control -> new figure, browser (median ms) "
            "| run all (s) | kernel peak RSS (MiB) |", "|---|---|---|---|---|"]
    ready = {lesson.slug for lesson in LESSONS if lesson.ready}  # a lesson not measured yet shows as a row of "-"
    for lesson in sorted(ready | set(widgets) | set(browser) | set(lessons)):
        kernel = widgets.get(lesson, {}).get("all_moves", {}).get("median_ms")
        page = browser.get(lesson, {}).get("new_figure", {}).get("median_ms")
        run = lessons.get(lesson, {})
        seconds = run.get("run", {}).get("median_ms")
        rows.append(" | ".join([
            f"| {lesson}", "-" if kernel is None else f"{kernel:.0f}", "-" if page is None else f"{page:.0f}",
            "-" if seconds is None else f"{seconds / 1e3:.1f}",
            "-" if run.get("peak_rss_mib") is None else f"{run['peak_rss_mib']:.0f}",
        ]) + " |")
    try:
        suite = load_results("suite")
    except FileNotFoundError:
        return "\n".join(rows)
    counts = ", ".join(f"{n} {kind}" for kind, n in suite["counts"].items())
    return "\n".join(rows) + f"\n\nWhole test suite (`make test`, 2 workers): {suite['wall_s'] / 60:.1f} min ({counts})."
