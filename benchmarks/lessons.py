#!/usr/bin/env python
"""Each lesson's top-to-bottom run time and the peak memory (RSS) of its kernel.

Runs every notebook in lessons/ with nbclient in a fresh kernel (as a learner's "Run all"),
timing the execution and reading the kernel's peak resident memory (VmHWM, Linux only) before
it shuts down. Model caches are warm after the first run, as for a learner on their second visit;
use --cold to point QEDU_CACHE_DIR at an empty folder first.

Usage: python benchmarks/lessons.py [--cold] [--repeats N]  ->  benchmarks/results/lessons.{json,md}
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


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_once(path: Path) -> tuple[float, float | None]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        start = time.perf_counter()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        seconds = time.perf_counter() - start
        rss = peak_rss_mib(client.km.provisioner.process.pid) if hasattr(client.km, "provisioner") else None
    return seconds, rss


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="start from an empty model cache")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["QEDU_CACHE_DIR"] = tempfile.mkdtemp(prefix="qedu-cache-")
    rows, payload = [], {"machine": machine(), "cold_cache": args.cold, "lessons": {}}
    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        times, peaks = [], []
        for _ in range(args.repeats):
            seconds, rss = run_once(path)
            times.append(seconds * 1e3)
            peaks.append(rss)
        s = summary(times)
        peak = max((p for p in peaks if p is not None), default=None)
        payload["lessons"][path.stem] = {"run": s, "peak_rss_mib": peak}
        rows.append(f"| {path.stem} | {s['median_ms'] / 1e3:.1f} | {'' if peak is None else f'{peak:.0f}'} |")
        print(rows[-1], flush=True)
    m = payload["machine"]
    md = "\n".join([
        "# Lesson run time and kernel memory",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, load average {m['load_average_1min']} at start, "
        f"{m['date']}; {'cold' if args.cold else 'warm'} model cache, {args.repeats} run(s) each. "
        "Produced by `python benchmarks/lessons.py`.",
        "",
        "| lesson | run all (s) | kernel peak RSS (MiB) |",
        "|---|---|---|",
        *rows,
    ])
    write("lessons", payload, md)


if __name__ == "__main__":
    main()
