#!/usr/bin/env python
"""Rewrite the lesson map in README.md from qedu/curriculum.py (tests check they agree)."""
from __future__ import annotations

import re
from pathlib import Path

from qedu.curriculum import lesson_map

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    new = re.sub(
        r"(<!-- lesson-map[^>]*-->\n).*?(\n<!-- /lesson-map -->)",
        lambda m: m.group(1) + lesson_map("lessons/") + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(new)


if __name__ == "__main__":
    main()
