"""The VM harness proves itself: a real kernel under systemd, kernel controls that really apply,
and Ansible's way in (an unprivileged admin account with sudo; root cannot log in over ssh).

testinfra connects as the admin account (Molecule's instance config); checks that need root use
`host.sudo()`, the way the playbooks use become."""

import os
import subprocess

import pytest
import yaml

INSTANCE_CONFIG = os.environ["MOLECULE_INSTANCE_CONFIG"]


@pytest.fixture(scope="module")
def instance(host):
    """This host's entry of the instance config written by molecule/shared/vm-create.yml."""
    name = host.backend.get_hostname()
    with open(INSTANCE_CONFIG, encoding="utf-8") as stream:
        entries = yaml.safe_load(stream)
    return next(entry for entry in entries if entry["instance"] == name)


def ssh_from_controller(instance, user, command, identity=None):
    """Run `command` over ssh from the controller, as the operator's workstation would."""
    return subprocess.run(
        [
            "ssh", "-p", str(instance["port"]), "-i", identity or instance["identity_file"],
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30",
            f"{user}@{instance['address']}", command,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_systemd_is_pid_1_on_a_virtual_machine_not_a_container(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    assert host.run("systemd-detect-virt --vm").stdout.strip() in ("qemu", "kvm", "none")
    # --container prints "none" and exits 1 when there is no container manager.
    container = host.run("systemd-detect-virt --container")
    assert container.rc == 1 and container.stdout.strip() == "none"


def test_the_kernel_is_the_vms_own(host):
    # The guest boots the image's Debian kernel, not the controller's.
    assert host.run("uname -r").stdout.strip().endswith("-amd64")
    cmdline = host.file("/proc/cmdline").content_string.split()
    for argument in ("apparmor=1", "security=apparmor", "audit=1"):
        assert argument in cmdline


def test_a_kernel_sysctl_really_changes(host):
    # Set by converge (and persisted in sysctl.d); read-only in a container.
    kptr_restrict = host.file("/proc/sys/kernel/kptr_restrict")
    assert kptr_restrict.content_string.strip() == "2"
    assert host.file("/etc/sysctl.d/90-vm-harness.conf").contains("kernel.kptr_restrict")
    # Writable at runtime by root: write another value and put it back.
    with host.sudo():
        assert host.run("sysctl -w kernel.kptr_restrict=1").rc == 0
        assert host.check_output("cat /proc/sys/kernel/kptr_restrict") == "1"
        assert host.run("sysctl -w kernel.kptr_restrict=2").rc == 0


def test_apparmor_is_enabled(host):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    with host.sudo():
        assert host.run("aa-status --enabled").rc == 0


def test_the_kernel_audit_subsystem_runs_auditd(host):
    assert host.service("auditd").is_running
    with host.sudo():
        status = host.check_output("auditctl -s")
    assert "enabled 1" in status
    assert "pid 0" not in status


def test_ansible_connects_as_an_unprivileged_admin(host, instance):
    assert host.user().name == instance["user"] != "root"
    assert host.user().uid != 0
    assert host.run("sudo -n id -u").stdout.strip() == "0"


def test_sshd_refuses_root_logins(host):
    with host.sudo():
        effective = host.check_output("sshd -T")
    assert "permitrootlogin no" in effective.splitlines()
    assert "passwordauthentication no" in effective.splitlines()


def test_root_cannot_log_in_over_ssh_even_with_an_authorized_key(host, instance):
    # Give root the admin's own key for the duration of the test: the login must still fail,
    # so the refusal comes from sshd's policy, not from a missing key.
    keys = "/root/.ssh/authorized_keys"
    with host.sudo():
        had_keys = host.file(keys).exists
        host.check_output("install -d -m 0700 /root/.ssh")
        if had_keys:
            host.check_output(f"cp -a {keys} {keys}.vm-test-backup")
        host.check_output(f"cat /home/{instance['user']}/.ssh/authorized_keys >> {keys}")
    try:
        as_root = ssh_from_controller(instance, "root", "id -u")
        as_admin = ssh_from_controller(instance, instance["user"], "id -u")
    finally:
        with host.sudo():
            if had_keys:
                host.check_output(f"mv {keys}.vm-test-backup {keys}")
            else:
                host.check_output(f"rm -f {keys}")
    assert as_admin.returncode == 0 and as_admin.stdout.strip() != "0"
    assert as_root.returncode == 255
    assert "Permission denied" in as_root.stderr
