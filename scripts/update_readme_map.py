#!/usr/bin/env python
"""Rewrite README.md's lesson map (from qedu/curriculum.py) and its lesson performance table
(from benchmarks/results/); tests check both are current. `make bench` runs it at the end."""
from __future__ import annotations

import re
from pathlib import Path

from qedu.curriculum import lesson_map
from qedu.results import lesson_performance_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    new = re.sub(
        r"(<!-- lesson-map[^>]*-->\n).*?(\n<!-- /lesson-map -->)",
        lambda m: m.group(1) + lesson_map("lessons/") + m.group(2),
        text,
        flags=re.S,
    )
    new = re.sub(
        r"(<!-- lesson-performance[^>]*-->\n).*?(\n<!-- /lesson-performance -->)",
        lambda m: m.group(1) + lesson_performance_table() + m.group(2),
        new,
        flags=re.S,
    )
    README.write_text(new)


if __name__ == "__main__":
    main()
