#!/usr/bin/env python
"""Where a lesson kernel's memory goes: the imports, step by step, and each lesson cell by cell.

Memory does not depend on the machine's load (times do), so these numbers can be taken on a busy
machine. Two parts:

1. **Imports.** A fresh Python process imports, one step at a time, what every lesson kernel
   imports (numpy, torch, matplotlib, ipywidgets, qedu) and the heavy modules that some library
   calls import on first use (torch._dynamo, which constructing any torch.optim optimizer imports;
   SymPy, which torch.broadcast_shapes imports; scikit-learn and SciPy). After each
   step: resident memory (VmRSS), its anonymous part (RssAnon, the process's own) and its
   file-backed part (RssFile: mostly shared-library pages, shared by every kernel on a machine).
2. **Lessons.** Every notebook in lessons/ runs in a fresh kernel (nbclient), cell by cell;
   after each cell the kernel's VmHWM (peak), VmRSS, RssAnon and RssFile are read from
   /proc/PID/status, and at the end which heavy modules the kernel imported.

Usage: python benchmarks/kernel_memory.py [--before OLD.json] [--only PREFIX]
       -> benchmarks/results/kernel_memory.{json,md}
       (--before: a kernel_memory.json from an older checkout, e.g. measured with PYTHONPATH pointing
       at it and --out; its lessons' peaks become the "before" column. Without it, the committed
       results' "before" column is kept.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, lesson_slugs, machine, write  # noqa: E402

FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
HEAVY = ("torch._dynamo", "sympy", "sklearn", "scipy", "pandas", "torch.onnx", "torch._inductor")
IMPORT_STEPS = [  # (label, statement): each runs after the ones before it, in one process
    ("python", "pass"),
    ("numpy", "import numpy"),
    ("torch", "import torch"),
    ("matplotlib.pyplot", "import matplotlib.pyplot"),
    ("ipywidgets", "import ipywidgets"),
    ("qedu + qedu.setup()", "import qedu; qedu.setup(seed=0)"),
    ("a lesson's qedu modules (02's imports)", "import qedu.widgets.quantization, qedu.models, qedu.nonuniform, "
     "qedu.packing, qedu.integer_arithmetic"),
    ("load_digits()", "import qedu.data; qedu.data.load_digits(seed=0)"),
    ("torch.broadcast_shapes() (imports SymPy)", "torch.broadcast_shapes((2, 1), (1, 3))"),
    ("a torch.optim optimizer (imports torch._dynamo)", "torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)"),
    ("scikit-learn's load_digits (imports SciPy)", "import sklearn.datasets; sklearn.datasets.load_digits()"),
]


def status(pid: int | str = "self") -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in FIELDS:
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def import_steps() -> list[dict]:
    """Memory after each of IMPORT_STEPS, in one fresh process."""
    code = "\n".join([
        "import json",
        "def status():",
        "    lines = open('/proc/self/status').read().splitlines()",
        f"    return {{l.split(':')[0]: round(int(l.split()[1]) / 1024, 1) for l in lines if l.split(':')[0] in {FIELDS!r}}}",
        "rows = []",
        *(f"{statement}\nrows.append(dict(step={label!r}, **status()))" for label, statement in IMPORT_STEPS),
        "print(json.dumps(rows))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_lesson(path: Path) -> dict:
    """Run a lesson cell by cell in a fresh kernel; the memory after each code cell, and the heavy modules."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    cells, heavy = [], None
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        cells.append({"cell": -1, "first_line": "(kernel started)", **status(pid)})
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            cells.append({"cell": index, "first_line": (cell.source.splitlines() or [""])[0][:70], **status(pid)})
        probe = nbformat.v4.new_code_cell(f"import sys; print([m for m in {HEAVY!r} if m in sys.modules])")
        nb.cells.append(probe)
        client.execute_cell(probe, len(nb.cells) - 1)
        heavy = "".join(o.get("text", "") for o in probe.outputs).strip()
    return {"peak_mib": cells[-1]["VmHWM"], "after_imports_mib": cells[1]["VmRSS"] if len(cells) > 1 else None,
            "anon_end_mib": cells[-1]["RssAnon"], "file_end_mib": cells[-1]["RssFile"], "heavy_modules": heavy,
            "cells": cells}


def _before_peaks(path: str | None) -> dict:
    """lesson -> peak MiB from an older kernel_memory.json (or a {lesson: [cells]} list of the same cells)."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    lessons = data.get("lessons", data)
    return {name: (v["peak_mib"] if isinstance(v, dict) else max(c["VmHWM"] for c in v)) for name, v in lessons.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="an older kernel_memory.json: its peaks become the 'before' column")
    parser.add_argument("--before-label", default="before", help="what the before column was measured on")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX", help="only these lessons")
    parser.add_argument("--out", help="write the JSON here instead of benchmarks/results (no markdown)")
    args = parser.parse_args(argv)
    payload = {"machine": machine(), "imports": import_steps(), "lessons": {}}
    for name in lesson_slugs():
        if args.only and not name.startswith(tuple(args.only)):
            continue
        start = time.perf_counter()
        payload["lessons"][name] = result = run_lesson(ROOT / "lessons" / f"{name}.ipynb")
        print(f"{name}: peak {result['peak_mib']:.0f} MiB ({time.perf_counter() - start:.0f} s) {result['heavy_modules']}",
              flush=True)
    before = _before_peaks(args.before)
    previous = Path(__file__).resolve().parent / "results" / "kernel_memory.json"
    if not args.before and not args.out and previous.is_file():  # keep the committed reference column
        payload["before"] = json.loads(previous.read_text()).get("before", {"label": args.before_label, "peak_mib": {}})
        before = payload["before"]["peak_mib"]
    else:
        payload["before"] = {"label": args.before_label, "peak_mib": before}
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        return
    m = payload["machine"]
    prev = None
    import_rows = []
    for row in payload["imports"]:
        delta = "" if prev is None else f"+{row['VmRSS'] - prev['VmRSS']:.0f}"
        import_rows.append(f"| {row['step']} | {row['VmRSS']:.0f} | {delta} | {row['RssAnon']:.0f} | {row['RssFile']:.0f} |")
        prev = row
    lesson_rows = []
    for name, r in payload["lessons"].items():
        grow = sorted(((b["VmHWM"] - a["VmHWM"], b) for a, b in zip(r["cells"][1:], r["cells"][2:])), key=lambda t: -t[0])
        top = "; ".join(f"cell {c['cell']} +{d:.0f} (`{c['first_line'][:40]}`)" for d, c in grow[:2] if d >= 5)
        old = before.get(name)
        lesson_rows.append(" | ".join([
            f"| {name}", "-" if old is None else f"{old:.0f}", f"{r['peak_mib']:.0f}",
            "yes" if r["peak_mib"] < 350 else "**no**", f"{r['after_imports_mib']:.0f}", f"{r['anon_end_mib']:.0f}",
            f"{r['file_end_mib']:.0f}", r["heavy_modules"].replace("'", ""), top or "-"]) + " |")
    md = "\n".join([
        "# Kernel memory: where it goes",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, {m['date']}, load average {m['load_average_1min']} "
        "at start (memory does not depend on load). Produced by `python benchmarks/kernel_memory.py`.",
        "",
        "## Imports, one fresh process, step by step (MiB)",
        "",
        "| step | RSS | added | anonymous | file-backed |",
        "|---|---|---|---|---|",
        *import_rows,
        "",
        "File-backed pages are mostly shared libraries (torch's alone ~75 MiB): every kernel on a machine maps the same "
        "pages once, so a class of N kernels needs about N x anonymous + one x file-backed. An ipykernel itself adds "
        "about 25 MiB over bare Python.",
        "",
        f"## Lessons: peak resident memory of the kernel (VmHWM, MiB), {payload['before']['label']} and now",
        "",
        "| lesson | peak before | peak now | under 350 | after the imports cell | anonymous at end | file-backed at end "
        "| heavy modules imported | cells that raised the peak most |",
        "|---|---|---|---|---|---|---|---|---|",
        *lesson_rows,
    ])
    write("kernel_memory", payload, md)


if __name__ == "__main__":
    main()
