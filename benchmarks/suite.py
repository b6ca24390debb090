#!/usr/bin/env python
"""The whole test suite's wall time, run exactly as `make test` runs it (2 workers, by file).

Usage: python benchmarks/suite.py [pytest args...]  ->  benchmarks/results/suite.{json,md}

Extra arguments go to pytest (e.g. `-m "not browser"`); the table says which were used. The
exit status is pytest's, so a failing suite is not recorded as a timing.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

COMMAND = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile"]  # the Makefile's `test` target


def main(argv=None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    info = machine()
    start = time.perf_counter()
    proc = subprocess.run(COMMAND + extra, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sys.stdout.write(proc.stdout[-3000:])
    sys.stderr.write(proc.stderr[-3000:])
    last = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", line)), "")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", last)}
    if proc.returncode != 0:
        print(f"the suite failed (exit {proc.returncode}); no timing recorded")
        return proc.returncode
    payload = {"machine": info, "command": " ".join(["pytest"] + COMMAND[3:] + extra), "wall_s": round(seconds, 1),
               "counts": counts}
    md = "\n".join([
        "# Test suite wall time",
        "",
        f"{info['platform']}, {info['cpu_count']} cores, torch {info['torch']}, load average "
        f"{info['load_average_1min']} at start, {info['date']}. Produced by `python benchmarks/suite.py`.",
        "",
        "| command | wall time | result |",
        "|---|---|---|",
        f"| `{payload['command']}` | {seconds / 60:.1f} min ({seconds:.0f} s) | "
        + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + " |",
        "",
        "Includes the browser tests (a real JupyterLab in headless Chromium) unless deselected.",
    ])
    write("suite", payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
