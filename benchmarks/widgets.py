#!/usr/bin/env python
"""Kernel-side update time of each lesson's main widget (no browser): median and spread.

Every control of each panel is moved through its values (dropdown options, slider ends and
middle, both states of a toggle), twice over, and `panel.last_update_ms` is recorded for each
move. The first pass includes cache misses; the table reports all moves and the second pass
(warm) separately.

Every lesson in lessons/ is covered: its main widget is the first one its notebook builds
(see ``_common.main_widget``), so a new lesson joins the table without editing this file.

Usage: python benchmarks/widgets.py   ->  benchmarks/results/widgets.{json,md}
       python benchmarks/widgets.py --only 02 --only 10   (those lessons; prints, writes nothing)
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import lesson_slugs, machine, main_widget, summary, write  # noqa: E402

import qedu  # noqa: E402

def control_values(widget) -> list:
    """The values a benchmark (or a test) moves a control through, ending at its start value."""
    start = widget.value
    if hasattr(widget, "options") and widget.options:
        opts = [o[1] if isinstance(o, tuple) else o for o in widget.options]
        values = [v for v in opts if v != start]
    elif hasattr(widget, "min") and hasattr(widget, "max"):
        mid = type(start)((widget.min + widget.max) / 2) if not isinstance(start, tuple) else start
        values = [v for v in (widget.min, mid, widget.max) if v != start]
    elif isinstance(start, bool):
        values = [not start]
    else:
        values = []
    return values + [start]


def measure(builder) -> tuple[list[float], list[float], list[float]]:
    """Wall-clock ms of every move and of the warm (second) pass, and the CPU ms of every move.

    CPU time (``time.process_time``: this process's own work) barely changes when other
    processes load the machine, while wall-clock time grows with the load: on a shared machine
    compare CPU times.
    """
    panel = builder()
    all_ms, warm_ms, cpu_ms = [], [], []
    for rep in range(2):
        for name, widget in panel.controls.items():
            for value in control_values(widget):
                start = time.process_time()
                widget.value = value
                cpu_ms.append((time.process_time() - start) * 1e3)
                all_ms.append(panel.last_update_ms)
                if rep == 1:
                    warm_ms.append(panel.last_update_ms)
    return all_ms, warm_ms, cpu_ms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="only the lessons whose name starts with PREFIX (repeatable); prints, writes no results")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write no results")
    args = parser.parse_args(argv)
    qedu.setup(seed=0)
    rows, payload = [], {"machine": machine(), "widgets": {}}
    for lesson in lesson_slugs():
        if args.only and not lesson.startswith(tuple(args.only)):
            continue
        found = main_widget(lesson)
        if found is None:
            continue  # a lesson without a widget
        module, name = found
        builder = getattr(importlib.import_module(module), name)
        all_ms, warm_ms, cpu_ms = measure(builder)
        a, w, c = summary(all_ms), summary(warm_ms), summary(cpu_ms)
        payload["widgets"][lesson] = {"widget": f"{module}.{name}", "all_moves": a, "warm": w, "cpu": c}
        rows.append(f"| {lesson} | `{name}` | {a['n']} | {a['median_ms']:.0f} | {a['p25_ms']:.0f}-{a['p75_ms']:.0f} "
                    f"| {a['max_ms']:.0f} | {w['median_ms']:.0f} | {c['median_ms']:.0f} |")
        print(rows[-1])
    m = payload["machine"]
    md = "\n".join([
        "# Widget update time (kernel side)",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
        f"load average {m['load_average_1min']} at start, {m['date']}. Produced by `python benchmarks/widgets.py`. "
        "Wall-clock times grow with the machine's load; the CPU column (this process's own time) much less.",
        "",
        "| lesson | widget | moves | median ms | p25-p75 ms | max ms | warm median ms | CPU median ms |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    if args.only or args.dry_run:
        print("(not written: --only/--dry-run)")
    else:
        write("widgets", payload, md)


if __name__ == "__main__":
    main()
