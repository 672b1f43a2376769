"""Pytest hook shared by the scenarios whose tests use testinfra's `host` fixture: on a failed
test, attach the host's failed units and the end of its journal to the report.

A scenario's tests/conftest.py imports the hook (see molecule/harness/tests/conftest.py)."""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    host = item.funcargs.get("host") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or host is None:
        return
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    journal = host.run("journalctl --boot --no-pager --lines=80").stdout
    report.sections.append(("failed units", failed or "(none)"))
    report.sections.append(("journal (last 80 lines)", journal))
