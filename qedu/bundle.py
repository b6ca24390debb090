"""Where the notebooks and the measured results tables are, in a wheel or in a checkout.

A wheel carries them inside the package, in ``qedu/_bundle/`` (setup.py copies them there at
build time); a checkout or an editable install has them at the top of the repository. Lessons
and the ``qedu`` command find them through :func:`bundle_path`, so nothing depends on the
folder a notebook happens to run in.

>>> sorted(KINDS)
['exercises', 'lessons', 'results', 'solutions']
>>> (bundle_path("lessons") / "00_welcome.ipynb").is_file()
True
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["KINDS", "bundle_path", "notebooks"]

_PACKAGE = Path(__file__).resolve().parent
# kind -> folder in a checkout (relative to the repository root)
KINDS = {
    "lessons": "lessons",
    "exercises": "exercises",
    "solutions": "solutions",
    "results": "benchmarks/results",
}


def bundle_path(kind: str) -> Path:
    """The folder that holds ``kind`` ('lessons', 'exercises', 'solutions' or 'results').

    Raises:
        ValueError: ``kind`` is not one of those.
        FileNotFoundError: neither an installed copy nor a checkout has it (a broken install).
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, one of {sorted(KINDS)}, got {type(kind).__name__} {kind!r}.")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    installed = _PACKAGE / "_bundle" / kind
    checkout = _PACKAGE.parent / KINDS[kind]
    for path in (installed, checkout):
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"qedu's {kind} are missing: looked in {installed} (a wheel) and {checkout} (a checkout). "
        "Reinstall qedu (`pip install --force-reinstall qedu`) or work from a clone of the repository."
    )


def notebooks(kind: str) -> list[Path]:
    """The ``.ipynb`` files of ``kind`` ('lessons', 'exercises' or 'solutions'), sorted by name.

    >>> notebooks("lessons")[0].name
    '00_welcome.ipynb'
    """
    if kind == "results":
        raise ValueError("kind must be 'lessons', 'exercises' or 'solutions' (results are tables, not notebooks).")
    return sorted(bundle_path(kind).glob("*.ipynb"))
