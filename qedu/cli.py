"""The ``qedu`` command (also ``python -m qedu``): notebooks for pip users, and a health check.

    qedu lessons [DIR] [--solutions]   copy lessons/ and exercises/ (and solutions/) into DIR
    qedu doctor                        versions, threads, CPU/GPU, optional extras, where files live
    qedu --version | --help

``qedu lessons`` never overwrites a notebook the learner has changed. It records what it wrote in
``DIR/.qedu-lessons.json`` (a sha256 per file): a file still equal to what qedu wrote is updated
to the installed version; a changed file is kept, and the installed version is written beside it
as ``NAME.new.ipynb``, with a message naming both.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import qedu

__all__ = ["main", "copy_lessons"]

MANIFEST = ".qedu-lessons.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_lessons(target: Path, solutions: bool = False, out=print) -> dict[str, list[str]]:
    """Copy the bundled notebooks into ``target``; return what happened to each file.

    Returns a dict with the relative paths that were ``written`` (new), ``updated`` (unchanged by
    the learner, replaced by the installed version), ``current`` (already identical) and
    ``kept`` (changed by the learner: the installed version went to ``NAME.new.ipynb``).

    Raises:
        NotADirectoryError: ``target`` exists and is not a folder.
    """
    from qedu.bundle import notebooks

    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder: choose another DIR.")
    manifest_path = target / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except (OSError, ValueError):
        manifest = {}  # unreadable: treat every existing file as the learner's
    report: dict[str, list[str]] = {"written": [], "updated": [], "current": [], "kept": []}
    kinds = ["lessons", "exercises"] + (["solutions"] if solutions else [])
    for kind in kinds:
        (target / kind).mkdir(parents=True, exist_ok=True)
        for source in notebooks(kind):
            rel = f"{kind}/{source.name}"
            data = source.read_bytes()
            dest = target / rel
            if not dest.exists():
                dest.write_bytes(data)
                report["written"].append(rel)
            elif dest.read_bytes() == data:
                report["current"].append(rel)
            elif manifest.get(rel) == _sha256(dest.read_bytes()):
                dest.write_bytes(data)  # the learner never touched it: bring it up to date
                report["updated"].append(rel)
            else:
                beside = dest.with_name(dest.stem + ".new.ipynb")
                beside.write_bytes(data)
                report["kept"].append(rel)
                out(f"kept your {dest} (changed since qedu wrote it); this qedu's version is {beside}")
                continue  # the manifest keeps the hash qedu wrote, so the file stays "changed"
            manifest[rel] = _sha256(data)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qedu",
        description="qedu: learn how quantization makes neural networks cheaper to train and to run.",
        epilog="Start with `qedu lessons`, then `jupyter lab qedu-lessons/lessons/00_welcome.ipynb`.",
    )
    parser.add_argument("--version", action="version", version=f"qedu {qedu.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    lessons = commands.add_parser(
        "lessons", help="copy the lesson and exercise notebooks into a folder",
        description="Copy lessons/ and exercises/ (with --solutions also solutions/) into DIR. "
        "Notebooks you changed are never overwritten.",
    )
    lessons.add_argument("dir", nargs="?", default="qedu-lessons", metavar="DIR",
                         help="where to put them (default: ./qedu-lessons)")
    lessons.add_argument("--solutions", action="store_true", help="also copy the worked solutions")
    commands.add_parser("doctor", help="print versions, threads, CPU/GPU, optional extras and where files live",
                        description="Print what lesson 00's environment check prints.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``qedu`` command; return its exit code (2 for bad arguments, like argparse)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "doctor":
        from qedu.doctor import doctor_text

        print(doctor_text())
        return 0
    target = Path(args.dir)
    try:
        report = copy_lessons(target, solutions=args.solutions)
    except (NotADirectoryError, PermissionError, FileNotFoundError) as err:
        print(f"qedu lessons: error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{len(files)} {what}" for what, files in report.items() if files)
    print(f"qedu lessons: {counts} in {target.resolve()}")
    print(f"open it with:  jupyter lab {target / 'lessons' / '00_welcome.ipynb'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
