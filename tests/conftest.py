"""Shared helpers for the repository-level tests (run from the repository root)."""
import importlib.util
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


def settings_plugin():
    """The filter plugin that generates the allow-list of setting names
    (playbooks/filter_plugins/matrix_settings.py), imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "matrix_settings", REPO / "playbooks" / "filter_plugins" / "matrix_settings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
