"""What this machine gives qedu: versions, threads, CPU/GPU, optional extras and where files live.

Lesson 00 prints it, and so does ``qedu doctor`` on the command line: the first thing to paste
into a question to your teacher or an issue.

>>> report = doctor_report()
>>> sorted(report)
['environment', 'extras', 'paths']
>>> report["paths"]["lessons"].endswith("lessons")
True
"""
from __future__ import annotations

import re
from importlib import metadata

from qedu import environment_report

__all__ = ["extras_status", "doctor_report", "doctor_text"]

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)")


def extras_status() -> dict[str, dict[str, str | None]]:
    """Each optional extra of qedu (from its own package metadata) -> {package: version or None}.

    ``None`` means not installed: the tests that compare against it are skipped (with the reason)
    until ``pip install "qedu[EXTRA]"``. Read from the installed metadata, never by importing.
    """
    try:
        requires = metadata.requires("qedu") or []
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return {}
    extras: dict[str, dict[str, str | None]] = {}
    for req in requires:
        marker = _EXTRA_MARKER.search(req)
        if not marker:
            continue  # a core dependency
        name = _NAME.match(req).group(1)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        extras.setdefault(marker.group(1), {})[name] = version
    return extras


def doctor_report() -> dict:
    """``environment`` (versions, threads, CPU/GPU), ``extras`` and ``paths`` (caches, notebooks)."""
    from qedu.bundle import bundle_path
    from qedu.models import default_cache_dir
    from qedu.results import results_dir

    paths = {"model cache": str(default_cache_dir())}
    for kind in ("lessons", "exercises", "solutions"):
        paths[kind] = str(bundle_path(kind))
    paths["results"] = str(results_dir())
    return {"environment": environment_report(), "extras": extras_status(), "paths": paths}


def doctor_text() -> str:
    """:func:`doctor_report` as aligned lines of text."""
    report = doctor_report()
    lines = [f"{key:>14}: {value}" for key, value in report["environment"].items()]
    lines.append("optional extras (pip install \"qedu[NAME]\"):")
    if not report["extras"]:
        lines.append(f"{'':>14}  (qedu's package metadata not found: run from an installed qedu)")
    for extra, packages in sorted(report["extras"].items()):
        shown = ", ".join(f"{name} {version or 'not installed'}" for name, version in packages.items())
        lines.append(f"{extra:>14}: {shown}")
    lines.append("where files live:")
    lines += [f"{key:>14}: {value}" for key, value in report["paths"].items()]
    return "\n".join(lines)
