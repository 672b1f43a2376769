"""What an auditor checks after roles/hardening ran (molecule/role-hardening).

From outside (the client host): only members of the SSH group log in, with a key; root, other
accounts and passwords are refused, and so are weak algorithms. On the host: the effective sshd
and sudo settings, the files of the kernel-level controls, and the audit: every control passes,
is waived with its reason, or is not applicable by detection (these hosts are containers).
"""
import json
import os
import pathlib
import subprocess

import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = pathlib.Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
TARGET_NAME = "role-hardening-target"
KEY = "/root/.ssh/id_molecule_hardening"
WAIVED = "HARD-NET-09"


def _host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def target():
    return _host(TARGET_NAME)


@pytest.fixture(scope="module")
def client():
    return _host("role-hardening-client")


@pytest.fixture(scope="module")
def audit(target):
    """The results of the audit that ended the converge (local fact written by the role)."""
    return json.loads(target.file("/etc/ansible/facts.d/hardening.fact").content_string)["audit"]


@pytest.fixture(scope="module")
def controls():
    import yaml

    data = yaml.safe_load((REPO / "roles/hardening/vars/controls.yml").read_text())
    return {control["id"]: control for control in data["__hardening_controls"]}


@pytest.fixture(scope="module")
def keyed_accounts(target, client):
    """One client key, authorised for alice (in sshusers), mallory (not) and root."""
    client.check_output(f"test -f {KEY} || ssh-keygen -q -t ed25519 -N '' -f {KEY}")
    public = client.check_output(f"cat {KEY}.pub")
    for user, home in (("alice", "/home/alice"), ("mallory", "/home/mallory"), ("root", "/root")):
        target.check_output(
            f"install -d -m 0700 -o {user} -g {user} {home}/.ssh && "
            f"printf '%s\\n' '{public}' > {home}/.ssh/authorized_keys && "
            f"chown {user}:{user} {home}/.ssh/authorized_keys && chmod 0600 {home}/.ssh/authorized_keys"
        )
    return public


def ssh(client, user, *options, command="id -un"):
    opts = " ".join(
        ["-o StrictHostKeyChecking=no", "-o UserKnownHostsFile=/dev/null", "-o ConnectTimeout=10", *options]
    )
    return client.run(f"ssh {opts} {user}@{TARGET_NAME} {command}")


# --- SSH, from the client host ------------------------------------------------------------------
def test_a_member_of_the_ssh_group_logs_in_with_a_key(client, keyed_accounts):
    result = ssh(client, "alice", "-o BatchMode=yes", f"-i {KEY}")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "alice"
    assert "Authorised access only" in result.stderr  # pre-authentication banner


@pytest.mark.parametrize("user", ["mallory", "root"])
def test_accounts_outside_the_ssh_group_and_root_are_refused_even_with_a_key(client, keyed_accounts, user):
    result = ssh(client, user, "-o BatchMode=yes", f"-i {KEY}")
    assert result.rc == 255
    assert "Permission denied" in result.stderr


def test_a_password_login_is_refused_and_only_keys_are_offered(client):
    # A real password attempt (askpass answers with alice's actual password): the server offers
    # publickey only, so the password is never even asked for.
    client.check_output("printf '#!/bin/sh\\necho not-a-real-password-4e1b\\n' > /root/askpass && chmod 0700 /root/askpass")
    result = client.run(
        "SSH_ASKPASS=/root/askpass SSH_ASKPASS_REQUIRE=force DISPLAY=none "
        "setsid ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 "
        "-o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive "
        f"alice@{TARGET_NAME} true"
    )
    assert result.rc == 255
    assert "Permission denied (publickey)." in result.stderr


@pytest.mark.parametrize("option", [
    "-o Ciphers=aes128-cbc",
    "-o KexAlgorithms=diffie-hellman-group14-sha1",
    # With an AEAD cipher no MAC is negotiated: offer a cipher that needs one.
    "-o Ciphers=aes128-ctr -o MACs=hmac-sha1",
    "-o HostKeyAlgorithms=ssh-rsa",
])
def test_weak_algorithms_are_refused(client, keyed_accounts, option):
    result = ssh(client, "alice", "-o BatchMode=yes", f"-i {KEY}", option)
    assert result.rc == 255
    assert "no matching" in result.stderr, result.stderr


# --- Effective settings on the host ----------------------------------------------------------
def test_sshd_runs_with_the_hardened_settings(target):
    effective = dict(line.split(" ", 1) for line in target.check_output("sshd -T").splitlines() if " " in line)
    assert effective["permitrootlogin"] == "no"
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["allowgroups"] == "sshusers"
    assert effective["maxauthtries"] == "3"
    assert effective["x11forwarding"] == "no"
    assert effective["allowtcpforwarding"] == "no"
    assert effective["allowagentforwarding"] == "no"
    assert not {"cbc", "sha1"} & set(effective["ciphers"].replace("-", ",").split(","))
    assert "sha1" not in effective["kexalgorithms"] and "sha1" not in effective["macs"]
    assert target.user("alice").groups.count("sshusers") == 1


def test_sudo_policy_is_valid_and_logs_every_command(target):
    assert target.run("visudo -c").rc == 0
    policy = target.file("/etc/sudoers.d/60-hardening")
    assert policy.mode == 0o440
    assert "Defaults use_pty" in policy.content_string
    target.check_output("sudo -u nobody /usr/bin/true")
    assert "COMMAND=/usr/bin/true" in target.file("/var/log/sudo.log").content_string
    assert target.run("grep -rEn '^[^#]*!\\s*authenticate' /etc/sudoers /etc/sudoers.d").rc == 1


def test_kernel_settings_are_written_and_the_waived_one_is_left_out(target):
    text = target.file("/etc/sysctl.d/99-zz-hardening.conf").content_string
    for line in ["kernel.kptr_restrict = 2", "kernel.dmesg_restrict = 1", "kernel.yama.ptrace_scope = 2",
                 "kernel.unprivileged_bpf_disabled = 1", "fs.protected_regular = 2", "fs.suid_dumpable = 0",
                 "net.ipv4.conf.all.rp_filter = 1", "net.ipv4.conf.all.accept_redirects = 0",
                 "net.ipv4.tcp_syncookies = 1", "kernel.kexec_load_disabled = 1"]:
        assert line in text.splitlines()
    assert "accept_ra" not in text  # HARD-NET-09 is waived


def test_uncommon_modules_are_blocked(target):
    text = target.file("/etc/modprobe.d/60-hardening.conf").content_string.splitlines()
    for module in ["cramfs", "udf", "dccp", "sctp", "tipc", "rds", "usb-storage"]:
        assert f"install {module} /bin/false" in text


def test_auditd_never_touches_the_host_kernel_from_a_container(target):
    # The rules are on disk; the unit is held by its condition, so the host's rules are untouched.
    assert "-k privileged" in target.file("/etc/audit/rules.d/60-hardening.rules").content_string
    assert target.check_output("systemctl show -p ConditionResult --value auditd.service") == "no"
    assert not target.service("auditd").is_running


def test_login_shells_get_the_restrictive_umask_and_no_core_dumps(target):
    assert target.check_output("su - alice -s /bin/bash -c umask") == "0027"
    assert target.check_output("systemctl show -p DefaultLimitCORE --value") == "0"


def test_only_security_updates_are_installed_unattended(target):
    dump = target.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    patterns = [line for line in dump.splitlines() if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert patterns == ['Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";']
    assert target.file("/etc/needrestart/conf.d/60-hardening.conf").contains("restart} = 'a'")


def test_logs_are_persistent_and_forwarded(target):
    assert target.file("/var/log/journal").is_directory
    assert target.service("rsyslog").is_running
    assert 'target="role-hardening-client"' in target.file("/etc/rsyslog.d/90-hardening-remote.conf").content_string


def test_no_compiler_is_left(target):
    for program in ["gcc", "cc", "make", "tcpdump", "telnet"]:
        assert target.run(f"command -v {program}").rc != 0, program


# --- The audit --------------------------------------------------------------------------------
def test_no_control_fails(audit):
    failed = [f"{r['id']}: {r['detail']}" for r in audit if r["status"] == "fail"]
    assert failed == []


def test_every_control_is_reported_once(audit, controls):
    assert [r["id"] for r in audit] == list(controls)
    assert {r["status"] for r in audit} <= {"pass", "waived", "not_applicable"}


def test_the_waived_control_is_reported_with_its_reason(audit):
    waived = [r for r in audit if r["status"] == "waived"]
    assert [r["id"] for r in waived] == [WAIVED]
    assert waived[0]["detail"].startswith("waived: Test waiver: this network hands out IPv6 addresses")


def test_only_kernel_level_controls_are_not_applicable_and_say_why(audit, controls):
    for result in audit:
        if result["status"] == "not_applicable":
            assert controls[result["id"]]["kernel"], result["id"]
            assert "container (docker/guest)" in result["detail"], result
        elif result["status"] != "waived" and not controls[result["id"]]["kernel"]:
            assert result["status"] == "pass", result


def test_the_audit_entry_point_runs_in_check_mode_and_changes_nothing(audit):
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, "--check", str(SCENARIO / "audit.yml")],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The JSON report comes first; other callbacks may print after it (Molecule's config enables
    # the timer: "Playbook run took ...").
    report, _ = json.JSONDecoder().raw_decode(result.stdout)
    assert report["stats"][TARGET_NAME]["changed"] == 0
    shown = report["plays"][0]["tasks"][-1]["hosts"][TARGET_NAME]["hardening_audit_results"]
    assert [(r["id"], r["status"]) for r in shown] == [(r["id"], r["status"]) for r in audit]
