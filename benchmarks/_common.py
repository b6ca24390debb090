"""Shared helpers for the benchmarks: machine description, robust statistics, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def summary(samples_ms: list[float]) -> dict:
    """Median and spread (25th-75th percentile, min, max) of a list of milliseconds."""
    s = sorted(samples_ms)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"n": len(s), "median_ms": round(statistics.median(s), 2), "p25_ms": round(q[0], 2),
            "p75_ms": round(q[2], 2), "min_ms": round(s[0], 2), "max_ms": round(s[-1], 2)}


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote benchmarks/results/{name}.json and .md")


ROOT = Path(__file__).resolve().parent.parent


def lesson_slugs() -> list[str]:
    """Every lesson notebook in lessons/, in order (``00_welcome``, ...): the benchmarks cover each one."""
    return sorted(p.stem for p in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))


def main_widget(lesson: str) -> tuple[str, str] | None:
    """``(module, builder)`` of the first widget ``lesson`` builds, read from its code cells.

    A builder is a name the notebook imports from ``qedu.widgets...`` whose return annotation
    is ``Panel``; the first cell that calls one decides. ``None`` when the lesson has no widget.
    """
    import ast
    import importlib
    import inspect

    import nbformat

    nb = nbformat.read(ROOT / "lessons" / f"{lesson}.ipynb", as_version=4)
    builders: dict[str, str] = {}  # name -> module
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qedu.widgets"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    fn = getattr(module, alias.name, None)
                    if callable(fn) and inspect.signature(fn).return_annotation in ("Panel", "'Panel'"):
                        builders[alias.asname or alias.name] = node.module
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in builders:
                return builders[node.func.id], node.func.id
    return None
