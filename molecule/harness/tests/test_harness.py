"""Prove the test containers behave like Debian 12 hosts with systemd (molecule/harness)."""

import pytest


def test_os_is_debian_12(host):
    info = host.system_info
    assert info.distribution == "debian"
    assert info.release.startswith("12")


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_is_running(host):
    state = host.run("systemctl is-system-running")
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state.stdout.strip() == "running", failed


def test_journal_works(host):
    assert host.service("systemd-journald").is_running
    out = host.check_output("journalctl --boot --no-pager --lines=5 --output=cat")
    assert out.strip()


def test_protect_system_strict_is_enforced(host):
    # With Docker's default capabilities systemd silently skips the sandbox. A unit with
    # ProtectSystem=strict must not be able to write below /usr.
    cmd = host.run(
        "systemd-run --wait --collect --quiet -p ProtectSystem=strict touch /usr/harness-probe"
    )
    assert cmd.rc != 0
    assert not host.file("/usr/harness-probe").exists
    # Control: the same unit without the sandbox can write there, so the failure above
    # comes from ProtectSystem and not from a broken systemd-run.
    ok = host.run("systemd-run --wait --collect --quiet touch /usr/harness-probe")
    assert ok.rc == 0, ok.stderr
    host.run("rm -f /usr/harness-probe")


def test_private_tmp_is_enforced(host):
    host.run("rm -f /tmp/harness-private-probe")
    cmd = host.run(
        "systemd-run --wait --collect --quiet -p PrivateTmp=true touch /tmp/harness-private-probe"
    )
    assert cmd.rc == 0, cmd.stderr
    assert not host.file("/tmp/harness-private-probe").exists


def test_package_from_converge_is_installed(host):
    assert host.package("tree").is_installed
    assert host.run("tree --version").rc == 0


def test_apt_reaches_the_mirror(host):
    cmd = host.run("apt-get update")
    assert cmd.rc == 0, cmd.stderr
    # apt-get update exits 0 even when a source failed: look for the failures themselves.
    assert "Err:" not in cmd.stdout
    assert "Failed to fetch" not in cmd.stderr
    policy = host.check_output("apt-cache policy tree")
    assert "Candidate: (none)" not in policy


@pytest.mark.parametrize(
    "unit", ["apt-daily.timer", "systemd-udevd.service", "getty.target"]
)
def test_unsuitable_units_are_masked(host, unit):
    assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "masked"
