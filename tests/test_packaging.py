"""pyproject.toml and environment.yml list the same packages with compatible pins; CI runs the README."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch-cpu": "torch", "pytorch": "torch", "python-build": "build"}
_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def _parse(req: str) -> tuple[str, str]:
    name, spec = _REQ.match(req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = dict(_parse(r) for r in data["project"]["dependencies"])
    test = dict(_parse(r) for r in data["project"]["optional-dependencies"]["test"])
    return core, test


def _environment() -> dict[str, str]:
    """Dependencies listed in environment.yml (a tiny reader: the file is a flat list)."""
    deps, in_deps = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        if in_deps and re.match(r"^\s+-\s+", line):
            item = line.split("#")[0].strip()[1:].strip()
            if not item or item.endswith(":"):
                continue
            name, spec = _parse(item.replace("=", "==", 1) if re.match(r"^[\w.\-]+=[^=]", item) else item)
            deps[CONDA_TO_PYPI.get(name, name)] = spec
        elif in_deps and line and not line.startswith(" "):
            in_deps = False
    return deps


def test_environment_lists_every_pyproject_dependency_with_the_same_pin():
    core, test = _pyproject()
    env = _environment()
    for name, spec in {**core, **test}.items():
        assert name in env, f"{name} is in pyproject.toml but not in environment.yml"
        assert env[name] == spec, f"{name}: pyproject pins {spec!r}, environment.yml pins {env[name]!r}"


def _build_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(_parse(r) for r in data["build-system"]["requires"])


def test_environment_has_nothing_pyproject_lacks():
    core, test = _pyproject()
    extra = set(_environment()) - set(core) - set(test) - set(_build_requirements()) - {"python", "pip"}
    assert not extra, f"environment.yml lists {extra} which pyproject.toml does not"


def test_binder_has_the_build_requirements_postbuild_needs():
    """postBuild builds qedu with --no-build-isolation: setuptools must be in Binder's environment,
    at the version pyproject.toml's build-system asks for."""
    assert "--no-build-isolation" in (ROOT / "postBuild").read_text()
    env = _environment()
    for name, spec in _build_requirements().items():
        assert env.get(name) == spec, f"environment.yml must list {name}{spec} (postBuild builds without isolation)"


def test_binder_uses_cpu_pytorch_from_conda_forge():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and "pytorch-cpu" in text
    assert "-e ." not in text, "an editable install in environment.yml defeats Binder's build cache"
    assert "--no-deps" in (ROOT / "postBuild").read_text()


def test_required_core_dependencies():
    core, test = _pyproject()
    for name in ("torch", "numpy", "matplotlib", "scikit-learn", "ipywidgets", "jupyterlab"):
        assert name in core
    for name in ("pytest", "nbval", "hypothesis"):
        assert name in test


def test_make_test_installs_extras_that_exist_including_the_teachers_nbgrader():
    """`make test` installs the extras whose tests CI never skips (QEDU_REQUIRE_EXTRAS=1)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.search(r'pip install -e "\.\[([\w,-]+)\]"', (ROOT / "Makefile").read_text())
    assert installed, "the Makefile's venv target must pip install -e '.[extras]'"
    named = installed.group(1).split(",")
    assert set(named) <= set(extras), f"the Makefile installs extras pyproject.toml lacks: {set(named) - set(extras)}"
    assert {"test", "teacher"} <= set(named)
    assert "nbgrader==0.9.6" in extras["teacher"], "tests/test_nbgrader.py is written against nbgrader 0.9.6"
    assert "jupyterhub==6.1.1" in extras["teacher"], "teacher/jupyterhub_config.py is written for JupyterHub 6.1"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test\b", ci, re.M), ".ci/run must run the README's test command"
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile, "CI must pin the CPU build of torch that these machines carry"
    assert "127.0.0.1" in makefile


def test_version_is_exposed():
    import qedu

    assert re.fullmatch(r"\d+\.\d+\.\d+", qedu.__version__)


def test_readme_lesson_map_is_current():
    from qedu.curriculum import lesson_map

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- lesson-map")[1].split("<!-- /lesson-map -->")[0]
    table = block.split("-->", 1)[1].strip()
    assert table == lesson_map("lessons/"), "README's lesson map is stale: paste qedu.curriculum.lesson_map('lessons/')"


def test_readme_lesson_performance_table_is_current():
    from qedu.results import lesson_performance_table

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- lesson-performance")[1].split("<!-- /lesson-performance -->")[0]
    table = block.split("-->\n", 1)[1].strip()
    assert table == lesson_performance_table(), "README's performance table is stale: run scripts/update_readme_map.py"
