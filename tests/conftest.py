"""Shared helpers for the repository-level tests (run from the repository root)."""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo():
    return REPO


def run(cmd, **kwargs):
    """Run a command from the repository root and return the CompletedProcess."""
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", PY_COLORS="0")
    env.update(kwargs.pop("env", {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)
