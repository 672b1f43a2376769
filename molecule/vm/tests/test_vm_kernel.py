"""What only a real kernel shows, on the VM of molecule/vm after playbooks/site.yml (the host
baseline and the whole stack): the kernel-level controls that the containers report "not
applicable" really apply here, and Ansible's way in is an unprivileged admin account with sudo
(root cannot log in over ssh, even holding an authorized key).

The full-stack checks shared with the container scenarios (molecule/shared/tests) run in the same
verify. testinfra's `host` here is the admin account (Molecule's instance config); checks that
need root use `host.sudo()`, the way the playbooks use become."""

import json
import os
import subprocess
import time

import pytest
import yaml

INSTANCE_CONFIG = os.environ["MOLECULE_INSTANCE_CONFIG"]
SYSCTL_FILE = "/etc/sysctl.d/99-zz-hardening.conf"


@pytest.fixture(scope="module")
def instance(host):
    """This host's entry of the instance config written by molecule/shared/vm-create.yml."""
    name = host.backend.get_hostname()
    with open(INSTANCE_CONFIG, encoding="utf-8") as stream:
        entries = yaml.safe_load(stream)
    return next(entry for entry in entries if entry["instance"] == name)


@pytest.fixture(scope="module")
def baseline(host):
    """{control ID: result} of the audit that ended the baseline run (the hardening fact)."""
    with host.sudo():
        fact = json.loads(host.file("/etc/ansible/facts.d/hardening.fact").content_string)
    return {result["id"]: result for result in fact["audit"]}


def baseline_sysctls(host):
    """{key: value} of the baseline's sysctl.d file, values with their blanks normalised."""
    wanted = {}
    for line in host.file(SYSCTL_FILE).content_string.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = (part.strip() for part in line.split("=", 1))
            wanted[key] = " ".join(value.split())
    return wanted


def ssh_from_controller(instance, user, command, identity=None, timeout=120):
    """Run `command` over ssh from the controller, as the operator's workstation would."""
    return subprocess.run(
        [
            "ssh", "-p", str(instance["port"]), "-i", identity or instance["identity_file"],
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30",
            f"{user}@{instance['address']}", command,
        ],
        capture_output=True, text=True, timeout=timeout, check=False,
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


def test_every_baseline_control_applies_here(baseline):
    # The kernel-level controls that the containers report "not applicable" are measured here:
    # nothing is left not applicable, and nothing fails.
    assert len(baseline) >= 40
    assert {i: r["detail"] for i, r in baseline.items() if r["status"] not in ("pass", "waived")} == {}
    for kernel_control in ("HARD-KRN-01", "HARD-NET-01", "HARD-MOD-01", "HARD-AUD-01",
                           "HARD-TIME-01", "HARD-MAC-01", "HARD-TMP-01"):
        assert baseline[kernel_control]["status"] == "pass", baseline[kernel_control]


def test_every_baseline_sysctl_is_in_force_in_the_running_kernel(host):
    # Each `key = value` of the baseline's sysctl.d file, read back from the live kernel.
    wanted = baseline_sysctls(host)
    assert "kernel.kptr_restrict" in wanted and "net.ipv4.conf.all.rp_filter" in wanted
    with host.sudo():
        live = {key: " ".join(host.check_output(f"sysctl -n {key}").split()) for key in wanted}
    assert {k: (v, live[k]) for k, v in wanted.items() if live[k] != v} == {}


@pytest.mark.parametrize("module", ["udf", "usb-storage", "sctp"])
def test_a_blocked_module_cannot_be_loaded(host, module):
    with host.sudo():
        # Debian's kernel ships the module; modprobe resolves it to the baseline's refusal.
        assert host.run(f"modinfo -n {module}").rc == 0
        assert "/bin/false" in host.check_output(f"modprobe -n -v {module}")
        attempt = host.run(f"modprobe {module}")
        loaded = host.run(f"grep -qw '^{module.replace('-', '_')}' /proc/modules")
    assert attempt.rc != 0
    assert loaded.rc != 0


def test_apparmor_is_enabled_and_enforcing(host):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    with host.sudo():
        assert host.run("aa-status --enabled").rc == 0
        enforced = host.check_output("aa-status --enforced")
    assert int(enforced) > 0


def test_auditd_has_loaded_the_baseline_rules_into_the_kernel(host):
    assert host.service("auditd").is_running
    with host.sudo():
        status = host.check_output("auditctl -s")
        rules = host.check_output("auditctl -l")
    assert "enabled 1" in status or "enabled 2" in status
    assert "pid 0" not in status
    # Identity files and sudoers are watched (keys of roles/hardening's rule set).
    assert "/etc/passwd" in rules and "/etc/sudoers" in rules


def test_auditing_stays_on_when_journald_restarts(host):
    # journald sets the kernel's auditing as its Audit= says whenever it starts (Debian: off).
    # A journald restart (its settings changed, a systemd upgrade) must not stop the records.
    with host.sudo():
        host.check_output("systemctl restart systemd-journald.service")
        status = host.check_output("auditctl -s")
    assert "enabled 1" in status or "enabled 2" in status


def test_tmp_is_a_tmpfs_without_devices_setuid_or_exec(host):
    mount = host.mount_point("/tmp")
    assert mount.filesystem == "tmpfs"
    assert {"nodev", "nosuid", "noexec"} <= set(mount.options)


def test_ansible_connects_as_an_unprivileged_admin(host, instance):
    assert host.user().name == instance["user"] != "root"
    assert host.user().uid != 0
    assert host.run("sudo -n id -u").stdout.strip() == "0"


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


def test_the_baseline_holds_after_a_reboot(host, instance):
    """The last test of this file: the VM reboots. What the role applied at run time must come
    back from the files it wrote: every sysctl (systemd-sysctl reads the baseline's file after
    the packages' own), /tmp, the audit rules in the kernel and the firewall."""
    wanted = baseline_sysctls(host)
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    host.run("sudo -n systemctl reboot")
    deadline = time.monotonic() + 900
    while True:
        probe = ssh_from_controller(instance, instance["user"], "cat /proc/sys/kernel/random/boot_id")
        if probe.returncode == 0 and probe.stdout.strip() not in ("", boot_id):
            break
        assert time.monotonic() < deadline, "the VM did not come back over ssh within 15 minutes"
        time.sleep(5)
    # Booting under emulation at a low CPU priority (CI) can take minutes after sshd is up.
    state = ssh_from_controller(instance, instance["user"], "systemctl is-system-running --wait", timeout=900)
    assert state.stdout.strip() in ("running", "degraded"), state

    keys = " ".join(wanted)
    live = ssh_from_controller(instance, instance["user"], f"sudo -n sysctl {keys}")
    assert live.returncode == 0, live.stderr
    in_force = {k.strip(): " ".join(v.split()) for k, v in
                (line.split("=", 1) for line in live.stdout.splitlines() if "=" in line)}
    assert {k: (v, in_force.get(k)) for k, v in wanted.items() if in_force.get(k) != v} == {}

    tmp = ssh_from_controller(instance, instance["user"], "findmnt -no FSTYPE,OPTIONS /tmp")
    fstype, options = tmp.stdout.split()
    assert fstype == "tmpfs" and {"nodev", "nosuid", "noexec"} <= set(options.split(","))
    rules = ssh_from_controller(instance, instance["user"], "sudo -n auditctl -l")
    assert "-k identity" in rules.stdout and "key=privileged" in rules.stdout, rules.stdout[:500]
    ruleset = ssh_from_controller(instance, instance["user"], "sudo -n nft list ruleset")
    assert "policy drop" in ruleset.stdout, ruleset.stdout[:500]
