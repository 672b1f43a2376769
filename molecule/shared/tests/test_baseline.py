"""The host baseline (roles/hardening) on every host of the full-stack scenarios.

Fast checks an auditor starts with: the audit that ended the baseline run has no failed control
(waived ones carry their reason, not-applicable ones say what was detected), sshd runs with
keys only and no root login, and the kernel settings are on disk for the next boot.
"""
import json

import pytest

from conftest import hosts_of, server

HOSTS = hosts_of("matrix")


def _audit(name):
    return json.loads(server(name).file("/etc/ansible/facts.d/hardening.fact").content_string)["audit"]


@pytest.mark.parametrize("name", HOSTS)
def test_no_baseline_control_fails(name):
    results = _audit(name)
    assert len(results) >= 40
    assert [f"{r['id']}: {r['detail']}" for r in results if r["status"] == "fail"] == []
    for result in results:
        assert result["status"] in {"pass", "waived", "not_applicable"}, result
        if result["status"] == "waived":
            assert result["detail"].startswith("waived: ") and len(result["detail"]) > len("waived: "), result
        if result["status"] == "not_applicable":
            assert "not applicable here" in result["detail"], result


@pytest.mark.parametrize("name", HOSTS)
def test_sshd_accepts_keys_only_and_no_root(name):
    effective = dict(
        line.split(" ", 1) for line in server(name).check_output("sshd -T").splitlines() if " " in line
    )
    assert effective["permitrootlogin"] == "no"
    assert effective["passwordauthentication"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["allowgroups"]
    assert "cbc" not in effective["ciphers"]


@pytest.mark.parametrize("name", HOSTS)
def test_kernel_settings_are_on_disk(name):
    lines = server(name).file("/etc/sysctl.d/99-zz-hardening.conf").content_string.splitlines()
    assert "kernel.kptr_restrict = 2" in lines
    assert "fs.suid_dumpable = 0" in lines
    assert "net.ipv4.conf.all.rp_filter = 1" in lines
