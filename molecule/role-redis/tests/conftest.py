"""On a failed test, attach the host's failed units and the end of its journal to the report."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from failure_report import pytest_runtest_makereport  # noqa: E402,F401  (a pytest hook)
