"""PostgreSQL's unit as an auditor checks it: the cluster and pg_ctlcluster
run as postgres with no capability, in a private user namespace, the system
is read-only to them, only the allowed peers' packets get through, and
`systemd-analyze security` rates the unit 2.0 or less. Reload (systemd and
pg_ctlcluster) and a restart still work inside the sandbox.
"""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from unit_security import MAX_EXPOSURE, capabilities, exposure, main_pid, open_items  # noqa: E402

UNIT = "postgresql@15-main.service"


@pytest.fixture(scope="module")
def private_address(host):
    facts = host.ansible("setup", "gather_subset=network")["ansible_facts"]
    return facts["ansible_default_ipv4"]["address"]


def show(host, *properties):
    args = " ".join(f"--property={p}" for p in properties)
    return dict(line.split("=", 1) for line in host.check_output(f"systemctl show {args} {UNIT}").splitlines())


def test_postgresql_exposure_is_at_most_2(host):
    level, verdict, report = exposure(host, UNIT)
    print(f"{UNIT} exposure {level} {verdict}")
    assert level <= MAX_EXPOSURE, f"{UNIT} exposure {level} {verdict}\n{open_items(report)}"


def test_cluster_runs_as_postgres_without_capabilities(host, private_address):
    props = show(host, "User", "PrivateUsers", "ProtectSystem", "IPAddressDeny", "IPAddressAllow")
    assert props["User"] == "postgres"
    assert props["PrivateUsers"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert set(props["IPAddressDeny"].split()) == {"0.0.0.0/0", "::/0"}
    assert set(props["IPAddressAllow"].split()) == {"127.0.0.0/8", "::1/128", f"{private_address}/32"}
    pid = main_pid(host, UNIT)
    assert host.check_output("ps -o user= -p %s", pid) == "postgres"
    effective, bounding = capabilities(host, pid)
    assert effective == 0 and bounding == 0


def test_system_is_read_only_to_postgresql_except_its_folders(host):
    pid = main_pid(host, UNIT)
    in_ns = "nsenter --target %s --mount -- touch %s"
    denied = host.run(in_ns, pid, "/etc/postgresql/sandbox-probe")
    assert denied.rc != 0 and "Read-only file system" in denied.stderr, denied.stderr
    for folder in ("/var/lib/postgresql", "/var/log/postgresql", "/var/run/postgresql"):
        allowed = host.run(in_ns, pid, f"{folder}/sandbox-probe")
        assert allowed.rc == 0, allowed.stderr
        host.run("rm -f %s", f"{folder}/sandbox-probe")


def test_reload_through_systemd_and_pg_ctlcluster(host):
    master = main_pid(host, UNIT)
    assert host.run("systemctl reload %s", UNIT).rc == 0
    assert host.run("pg_ctlcluster 15 main reload").rc == 0
    assert main_pid(host, UNIT) == master
    log = host.check_output("tail -n 20 /var/log/postgresql/postgresql-15-main.log")
    assert "received SIGHUP, reloading configuration files" in log


def test_restart_stops_with_pg_ctlcluster_and_starts_again(host):
    """The stop goes through pg_ctlcluster's fast shutdown, not systemd's SIGTERM fallback."""
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    assert host.run("systemctl restart %s", UNIT).rc == 0
    journal = host.check_output("journalctl --unit %s --since %s --no-pager", UNIT, since)
    assert "FAILURE" not in journal and "pid file is invalid" not in journal, journal
    log = host.check_output("tail -n 40 /var/log/postgresql/postgresql-15-main.log")
    assert "received fast shutdown request" in log, log
    assert host.service("postgresql@15-main").is_running
    ping = host.run("runuser -u postgres -- pg_isready -q -p 5432")
    assert ping.rc == 0
