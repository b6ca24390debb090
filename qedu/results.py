"""Results measured by the scripts in ``benchmarks/``, for lessons that show them.

Some tables take minutes to measure (multi-seed ablations, latency sweeps), too long for a
lesson cell. The benchmark scripts write them to ``benchmarks/results/NAME.json`` and the
lesson loads them with :func:`load_results`, saying where they came from.

The folder is found, in order, from ``$QEDU_RESULTS_DIR``, next to the installed package (a
clone or editable install: ``<repo>/benchmarks/results``), or from the current folder
(``benchmarks/results`` or ``../benchmarks/results``, e.g. a notebook running in ``lessons/``).

>>> 'machine' in load_results("ptq_ablation")
True
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["results_dir", "load_results", "results_markdown", "lesson_performance_table"]


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("QEDU_RESULTS_DIR"):
        found.append(Path(os.environ["QEDU_RESULTS_DIR"]))
    found.append(Path(__file__).resolve().parent.parent / "benchmarks" / "results")
    found += [Path.cwd() / "benchmarks" / "results", Path.cwd().parent / "benchmarks" / "results"]
    return found


def results_dir() -> Path:
    """The ``benchmarks/results`` folder, or a FileNotFoundError that says how to get one."""
    for path in _candidates():
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in _candidates())
    raise FileNotFoundError(
        f"no benchmarks/results folder found (looked in {tried}). The measured tables ship with the "
        "qedu repository: open the lessons from a clone, or set QEDU_RESULTS_DIR to a copy of "
        "benchmarks/results."
    )


def _path(name, suffix: str) -> Path:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a results file name such as 'ptq_ablation', got {name!r}.")
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
    rows = ["| lesson | widget update, kernel (median ms) | control -> new figure, browser (median ms) "
            "| run all (s) | kernel peak RSS (MiB) |", "|---|---|---|---|---|"]
    for lesson in sorted(set(widgets) | set(browser) | set(lessons)):
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
