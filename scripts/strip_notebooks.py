#!/usr/bin/env python
"""Strip outputs, execution counts and noisy metadata from notebooks (in place).

Usage: python scripts/strip_notebooks.py [paths...]   (default: lessons/ exercises/ solutions/)
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
KEEP_NB_METADATA = {"kernelspec", "language_info"}
KEEP_CELL_METADATA = {"tags"}


def strip(nb) -> None:
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NB_METADATA}
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    paths = [Path(a) for a in args] or [ROOT / d for d in ("lessons", "exercises", "solutions")]
    files = [f for p in paths for f in (sorted(p.glob("*.ipynb")) if p.is_dir() else [p])]
    for f in files:
        nb = nbformat.read(f, as_version=4)
        before = nbformat.writes(nb)
        strip(nb)
        after = nbformat.writes(nb) + "\n"
        if after != before + "\n" and after != before:
            f.write_text(after)
            print(f"stripped {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
