#!/usr/bin/env python
"""Each lesson's top-to-bottom run time and the peak memory (RSS) of its kernel.

Runs every notebook in lessons/ with nbclient in a fresh kernel (as a learner's "Run all"),
timing the execution and reading the kernel's peak resident memory (VmHWM, Linux only) before
it shuts down. Also recorded: the kernel's memory after the lesson's first code cell (its
imports: the floor every lesson pays) and its anonymous memory at the end (RssAnon: the part no
other kernel shares; the rest is mostly shared-library pages that every kernel on the machine
maps once). Model caches are warm after the first run, as for a learner on their second visit;
use --cold to point QEDU_CACHE_DIR at an empty folder first.

Usage: python benchmarks/lessons.py [--cold] [--repeats N]  ->  benchmarks/results/lessons.{json,md}
       python benchmarks/lessons.py --only 00 --only 12   (those lessons; prints, writes nothing)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, summary, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def memory_mib(pid: int | None, field: str = "VmHWM") -> float | None:
    """A memory field of /proc/PID/status in MiB (VmHWM: peak resident; VmRSS: now; RssAnon: not file-backed)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int) -> float | None:
    return memory_mib(pid, "VmHWM")


def run_once(path: Path) -> tuple[float, dict]:
    """Seconds to run every cell, and the kernel's memory (MiB): peak, after the first code cell, anonymous at the end."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    memory = {}
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid if hasattr(client.km, "provisioner") else None
        start = time.perf_counter()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
            if cell.cell_type == "code" and "after_imports" not in memory:
                memory["after_imports"] = memory_mib(pid, "VmRSS")
        seconds = time.perf_counter() - start
        memory["peak"] = memory_mib(pid, "VmHWM")
        memory["anon_end"] = memory_mib(pid, "RssAnon")
    return seconds, memory


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="start from an empty model cache")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="only the lessons whose name starts with PREFIX (repeatable); prints, writes no results")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["QEDU_CACHE_DIR"] = tempfile.mkdtemp(prefix="qedu-cache-")
    rows, payload = [], {"machine": machine(), "cold_cache": args.cold, "lessons": {}}
    for path in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")):  # every lesson, as _common.lesson_slugs
        if args.only and not path.stem.startswith(tuple(args.only)):
            continue
        times, memories = [], []
        for _ in range(args.repeats):
            seconds, memory = run_once(path)
            times.append(seconds * 1e3)
            memories.append(memory)
        s = summary(times)

        def worst(key):
            return max((m[key] for m in memories if m.get(key) is not None), default=None)

        peak, floor, anon = worst("peak"), worst("after_imports"), worst("anon_end")
        payload["lessons"][path.stem] = {"run": s, "peak_rss_mib": peak, "after_imports_rss_mib": floor,
                                         "anon_end_mib": anon}
        rows.append(" | ".join([f"| {path.stem}", f"{s['median_ms'] / 1e3:.1f}",
                                *("" if v is None else f"{v:.0f}" for v in (peak, floor, anon))]) + " |")
        print(rows[-1], flush=True)
    m = payload["machine"]
    md = "\n".join([
        "# Lesson run time and kernel memory",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, load average {m['load_average_1min']} at start, "
        f"{m['date']}; {'cold' if args.cold else 'warm'} model cache, {args.repeats} run(s) each. "
        "Produced by `python benchmarks/lessons.py`.",
        "",
        "| lesson | run all (s) | kernel peak RSS (MiB) | after the imports cell (MiB) | anonymous at the end (MiB) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Peak RSS counts the pages of shared libraries (torch's alone are ~75 MiB), which every kernel on a machine "
        "shares; anonymous memory is each kernel's own. See kernel_memory.md for where it goes.",
    ])
    if args.only:
        print("(not written: --only)")
    else:
        write("lessons", payload, md)


if __name__ == "__main__":
    main()
