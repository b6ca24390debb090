"""Build hook: put the lesson notebooks and the measured results tables inside the wheel.

Everything else is declared in pyproject.toml. The notebooks (``lessons/``, ``exercises/``,
``solutions/``) and the tables the lessons read (``benchmarks/results/``) live at the top of the
repository, where learners and benchmark scripts find them; a wheel must carry them too, so that
``pip install qedu`` followed by ``qedu lessons`` works anywhere (tests/test_installed.py builds
the wheel, installs it into a fresh venv and runs every notebook from it).

They are copied into ``qedu/_bundle/`` of the build, never into the source tree. An editable
install skips the copy: there qedu reads them from the checkout itself (see qedu/bundle.py).
"""
from pathlib import Path
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# checkout folder -> (folder inside the installed package, file patterns)
BUNDLED = {
    "lessons": ("_bundle/lessons", ("*.ipynb",)),
    "exercises": ("_bundle/exercises", ("*.ipynb",)),
    "solutions": ("_bundle/solutions", ("*.ipynb",)),
    "benchmarks/results": ("_bundle/results", ("*.json", "*.md")),
}


class build_py_with_bundle(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout directly
        for source, (target, patterns) in BUNDLED.items():
            files = sorted(f for pattern in patterns for f in (ROOT / source).glob(pattern))
            if not files:
                raise FileNotFoundError(
                    f"nothing to bundle in {ROOT / source}: build qedu from a checkout or from its sdist"
                )
            out = Path(self.build_lib) / "qedu" / target
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, out / f.name)


setup(cmdclass={"build_py": build_py_with_bundle})
