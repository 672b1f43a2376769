"""Every service unit the project runs is sandboxed: `systemd-analyze security`
rates its exposure 2.0 or less on the live host (issue 5).

Every host is asked about every project unit; a unit that is not installed on
a host is skipped there, but each tier's own unit must be present where the
inventory puts that tier. The figures are printed (pytest -s or -rA, and in
the report of a failure), so that a run documents each unit's exposure.
"""
import pathlib
import sys

import pytest

from conftest import hosts_of, server

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from unit_security import MAX_EXPOSURE, exposure, open_items  # noqa: E402

# The project's service units, and the hosts that run each. Synapse's main process runs on the
# first homeserver host; the others run workers only (their units: test_workers.py).
UNITS = {
    "postgresql@15-main.service": hosts_of("matrix_db"),
    "matrix-synapse.service": hosts_of("matrix_homeserver")[:1],
    "coturn.service": hosts_of("matrix_turn"),
    "nginx.service": hosts_of("matrix_proxy"),
}


# Every host of the deployment (the union of the function groups).
HOSTS = sorted({name for hosts in UNITS.values() for name in hosts} | set(hosts_of("matrix_homeserver")))


def is_installed(host, unit):
    return host.check_output("systemctl show --property=LoadState --value %s", unit) == "loaded"


@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize("name", HOSTS)
def test_unit_exposure_is_at_most_2(name, unit):
    host = server(name)
    if not is_installed(host, unit):
        assert name not in UNITS[unit], f"{name}: {unit} is missing, yet the host should run it"
        pytest.skip(f"{unit} is not installed on {name}")
    assert host.service(unit).is_running, f"{name}: {unit} is not running"
    level, verdict, report = exposure(host, unit)
    print(f"{name}: {unit} exposure {level} {verdict}")
    assert level <= MAX_EXPOSURE, f"{name}: {unit} exposure {level} {verdict}\n{open_items(report)}"
