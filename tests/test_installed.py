"""What pip, JupyterHub and Binder users really get, tried the way they get it.

The rest of the suite runs against the checkout (an editable install). That once hid a wheel
without ``qedu.widgets``: every lesson failed for anyone who had not cloned the repository. Here:

1. build the sdist, and the wheel *from that sdist* (``python -m build``), as a release would;
2. install the wheel, not editable, into a fresh venv outside the checkout (torch pinned as in
   the Makefile, so pip takes the CPU build);
3. ``qedu lessons --solutions`` into a temporary folder, then execute every lesson and every
   solution there in a kernel of that venv, with nothing of the checkout on the path;
4. run Binder's exact ``postBuild`` in a copy of the repository, into that venv's
   dependencies, and check it installs the same files as the wheel, then run lessons with it.

Everything happens in one module-scoped fixture, so ``--dist loadfile`` keeps it on one worker
while the other worker runs the rest of the suite (it is listed first in ``testpaths``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(p.name for p in (ROOT / "lessons").glob("*.ipynb"))
SOLUTIONS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))
KERNEL = "qedu-installed"


def _torch_requirement() -> str:
    """The torch pin the Makefile installs (``TORCH ?= torch==2.13.0``): the CPU build CI tests."""
    match = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile no longer sets TORCH ?= ...; keep this test in step with it"
    return os.environ.get("QEDU_TEST_TORCH", match.group(1))


def _clean_env(**extra) -> dict[str, str]:
    """The environment without anything that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run(cmd, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@dataclass
class Installed:
    sdist: Path
    wheel: Path
    venv: Path
    python: Path
    site: Path  # the venv's site-packages
    work: Path  # where `qedu lessons --solutions` wrote the notebooks
    kernels: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT])
    (sdist,) = dist.glob("qedu-*.tar.gz")
    (wheel,) = dist.glob("qedu-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    # setuptools>=77 is not needed by the wheel, but Binder's postBuild (below) builds with
    # --no-build-isolation in an environment that has it (environment.yml lists it).
    _run([python, "-m", "pip", "install", "-q", _torch_requirement(), wheel, "setuptools>=77"], timeout=1800)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    work = base / "work"
    work.mkdir()
    _run([venv / "bin" / "qedu", "lessons", "--solutions", "course"], cwd=work)
    kernels = base / "kernels"
    (kernels / KERNEL).mkdir(parents=True)
    (kernels / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qedu (installed wheel)", "language": "python",
    }))
    return Installed(sdist, wheel, venv, python, site, work / "course", kernels)


def _execute(notebook: Path, kernels: Path, env: dict[str, str]) -> None:
    """Run a notebook top to bottom in the venv's kernel, in its own folder; fail with the cell."""
    nb = nbformat.read(notebook, as_version=4)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        pytest.fail(f"{notebook.name} failed when run from the installed wheel:\n{str(err)[-4000:]}", pytrace=False)


# --- what the artefacts carry --------------------------------------------------------------

def test_wheel_ships_every_subpackage_and_the_data_lessons_read(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "qedu").rglob("__init__.py"))
    assert "qedu/widgets" in packages and "qedu/checks" in packages
    for package in packages:
        assert f"{package}/__init__.py" in names, f"the wheel lacks {package}: a new subpackage was not picked up"
    for path in (ROOT / "qedu").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".safetensors", ".txt") and "__pycache__" not in path.parts:
            assert path.relative_to(ROOT).as_posix() in names, f"the wheel lacks package data {path}"
    for kind, folder in (("lessons", "lessons"), ("exercises", "exercises"), ("solutions", "solutions"),
                         ("results", "benchmarks/results")):
        for path in sorted((ROOT / folder).iterdir()):
            if path.suffix in (".ipynb", ".json", ".md"):
                assert f"qedu/_bundle/{kind}/{path.name}" in names, f"the wheel lacks {folder}/{path.name}"
    assert any(n.endswith("entry_points.txt") for n in names), "the wheel declares no `qedu` command"


def test_sdist_carries_the_tests_notebooks_and_build_hook(installed):
    with tarfile.open(installed.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "tests/test_installed.py", "lessons/00_welcome.ipynb",
                   "solutions/00_welcome.ipynb", "exercises/00_welcome.ipynb", "exercise_sources/00_welcome.py",
                   "nbgrader/nbgrader_config.py", "nbgrader/source/00_welcome/00_welcome.ipynb",
                   "benchmarks/results/ptq_ablation.json", "qedu/widgets/__init__.py", "postBuild", "Makefile",
                   "teacher/jupyterhub_config.py", "teacher/z2jh/values.yaml", "docs/vendor/README.md"):
        assert needed in names, f"the sdist lacks {needed}"


# --- the qedu command, as installed ---------------------------------------------------------

def test_installed_qedu_is_the_wheel_not_the_checkout(installed):
    out = _run([installed.python, "-c", "import qedu, qedu.widgets, qedu.checks; print(qedu.__file__)"],
               cwd=installed.work).stdout.strip()
    assert Path(out).is_relative_to(installed.site), f"imported {out}, not the installed wheel"


def test_qedu_command_version_help_and_bad_arguments(installed):
    qedu_cmd = installed.venv / "bin" / "qedu"
    assert _run([qedu_cmd, "--version"]).stdout.strip().startswith("qedu ")
    assert "lessons" in _run([qedu_cmd, "--help"]).stdout
    assert "--solutions" in _run([installed.python, "-m", "qedu", "lessons", "--help"]).stdout
    for bad in (["frobnicate"], ["lessons", "--solution-s"], ["lessons", "a", "b"]):
        proc = subprocess.run([qedu_cmd, *bad], capture_output=True, text=True, env=_clean_env())
        assert proc.returncode == 2, (bad, proc.returncode, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("qedu"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_qedu_doctor_reports_versions_extras_and_paths(installed):
    text = _run([installed.venv / "bin" / "qedu", "doctor"], cwd=installed.work).stdout
    for needed in ("torch: 2.", "torch_threads", "cuda", "optional extras", "ref: torchao not installed",
                   "model cache", str(installed.site / "qedu" / "_bundle" / "lessons")):
        assert needed in text, f"`qedu doctor` does not say {needed!r}:\n{text}"


def test_qedu_lessons_wrote_every_notebook(installed):
    for kind, names in (("lessons", LESSONS), ("exercises", sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))),
                        ("solutions", SOLUTIONS)):
        for name in names:
            assert (installed.work / kind / name).read_bytes() == (ROOT / kind / name).read_bytes(), f"{kind}/{name}"


# --- every notebook, run from the installed wheel -------------------------------------------

@pytest.mark.parametrize("name", LESSONS)
def test_lesson_runs_from_the_installed_wheel(installed, name):
    _execute(installed.work / "lessons" / name, installed.kernels, _clean_env())


@pytest.mark.parametrize("name", SOLUTIONS)
def test_solution_runs_from_the_installed_wheel(installed, name):
    _execute(installed.work / "solutions" / name, installed.kernels, _clean_env())


# --- Binder: its exact postBuild, in a copy of the repository --------------------------------

def _package_files(site: Path) -> dict[str, str]:
    root = site / "qedu"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_binder_postbuild_installs_the_same_kit_and_lessons_run(installed, tmp_path):
    """repo2docker clones the repository, creates environment.yml's environment and runs postBuild
    in the clone. Here: a copy of the tracked files, the venv's dependencies, postBuild verbatim
    (its pip install goes to a separate prefix through PIP_PREFIX, so the wheel's copy stays)."""
    tracked = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    repo = tmp_path / "repo"
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    wheel_files = _package_files(installed.site)
    assert "widgets/__init__.py" in wheel_files
    prefix = tmp_path / "binder-prefix"
    # PIP_PREFIX sends the install elsewhere; PIP_IGNORE_INSTALLED keeps pip from first
    # uninstalling the wheel's copy from the venv (the command itself is postBuild's, verbatim).
    env = _clean_env(PATH=f"{installed.venv / 'bin'}{os.pathsep}{os.environ['PATH']}", PIP_PREFIX=str(prefix),
                     PIP_IGNORE_INSTALLED="1")
    _run(["bash", repo / "postBuild"], cwd=repo, env=env)
    binder_site = prefix / installed.site.relative_to(installed.venv)
    assert _package_files(installed.site) == wheel_files, "postBuild changed the venv's own qedu"
    assert _package_files(binder_site) == wheel_files, "postBuild installs different files from the wheel"
    # The same files as the wheel, whose every notebook runs above; Binder users open the clone's
    # lessons/ directly, so run two of them there: the first, and one that reads measured tables.
    kernel_env = _clean_env(PYTHONPATH=str(binder_site))
    for name in ("00_welcome.ipynb", "06_mixed_precision_training.ipynb"):
        _execute(repo / "lessons" / name, installed.kernels, kernel_env)
