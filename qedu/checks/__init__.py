"""Exercise checks: ``checks.check_<name>(fn)`` tests a learner's function.

Each lesson's checks live in their own module and are re-exported here, so a notebook needs
only ``from qedu import checks``. The framework is in :mod:`qedu.checks.framework`.
"""
from qedu.checks.framework import Case, CheckFailed, CheckResult, CheckSpec, Failure, Mistake, compare, localize, run_check

from qedu.checks.welcome import *  # noqa: F401,F403
from qedu.checks.formats import *  # noqa: F401,F403
from qedu.checks.quantizers import *  # noqa: F401,F403
from qedu.checks.ptq import *  # noqa: F401,F403
from qedu.checks.qat import *  # noqa: F401,F403
from qedu.checks.evaluation import *  # noqa: F401,F403
from qedu.checks.training import *  # noqa: F401,F403
from qedu.checks.lowprec import *  # noqa: F401,F403
from qedu.checks.deploy import *  # noqa: F401,F403

__all__ = ["Case", "CheckFailed", "CheckResult", "CheckSpec", "Failure", "Mistake", "compare", "localize", "run_check"]
