"""``python -m qedu`` is the ``qedu`` command (see qedu/cli.py)."""
import sys

from qedu.cli import main

sys.exit(main())
