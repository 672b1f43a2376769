"""Wrong inventories are stopped by preflight before any host is contacted.

Each case writes a production-like inventory whose four hosts point at a
closed loopback port: a run that got past validation would try to connect and
report UNREACHABLE. A correct run therefore shows the validation message, no
UNREACHABLE host and nothing changed. The control case proves the same
inventory, when valid, passes validation and only then fails on the hosts.
"""
import datetime
import secrets

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import run

NAMES = ["matrix.example.gouv.fr", "example.gouv.fr", "element.example.gouv.fr", "turn.example.gouv.fr"]


def _certificate():
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


CHAIN, KEY = _certificate()


def _valid_settings():
    return {
        "matrix_environment": "production",
        "matrix_server_name": "example.gouv.fr",
        "matrix_homeserver_fqdn": "matrix.example.gouv.fr",
        "matrix_element_fqdn": "element.example.gouv.fr",
        "matrix_turn_fqdn": "turn.example.gouv.fr",
        "matrix_tls_mode": "provided",
        "matrix_tls_certificate_chain": CHAIN,
        "matrix_tls_private_key": KEY,
        "matrix_synapse_database_password": secrets.token_urlsafe(36),
        "matrix_turn_shared_secret": secrets.token_urlsafe(36),
        "synapse_registration_shared_secret": secrets.token_urlsafe(36),
        "synapse_macaroon_secret_key": secrets.token_urlsafe(36),
        "synapse_form_secret": secrets.token_urlsafe(36),
        "matrix_users": [{"name": "admin", "admin": True, "password": secrets.token_urlsafe(24)}],
        # Offline site: Element web from the controller (any file will do:
        # the run stops before it is read).
        "element_web_archive_src": "/etc/hostname",
    }


def _write_inventory(path, settings, groups=("matrix_db", "matrix_homeserver", "matrix_turn", "matrix_proxy")):
    hosts = {
        "matrix": {
            "children": {
                group: {"hosts": {f"{group.split('_')[1]}1.example.gouv.fr": None}} for group in groups
            },
            "vars": {
                # A closed loopback port: getting past preflight means UNREACHABLE.
                "ansible_host": "127.0.0.1",
                "ansible_port": 9,
                "ansible_connection": "ssh",
                "ansible_ssh_common_args": "-o ConnectTimeout=3",
            },
        }
    }
    (path / "group_vars" / "matrix").mkdir(parents=True)
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (path / "group_vars" / "matrix" / "main.yml").write_text(yaml.safe_dump(settings))
    return path


def _site(inventory):
    return run(["ansible-playbook", "-i", str(inventory / "hosts.yml"), "playbooks/site.yml"])


def _without(key):
    settings = _valid_settings()
    del settings[key]
    return settings


def _with(**changes):
    settings = _valid_settings()
    settings.update(changes)
    return settings


CASES = {
    "missing server name": (_without("matrix_server_name"), "matrix_server_name is not set"),
    "invalid host name": (
        _with(matrix_homeserver_fqdn="matrix_hs.example.gouv.fr"),
        'matrix_homeserver_fqdn is "matrix_hs.example.gouv.fr": it must be a fully qualified',
    ),
    "no database password source": (
        _without("matrix_synapse_database_password"),
        "matrix_synapse_database_password is not set: put it in your inventory vault",
    ),
    "misspelt setting": (_with(matrix_sever_name="example.gouv.fr"), "Unknown setting(s) matrix_sever_name"),
    "staging CA in production": (_with(matrix_tls_mode="internal_ca"), "the internal staging CA is refused in production"),
    "role argument out of its choices": (
        _with(synapse_encryption_enabled_by_default_for_room_type="sometimes"),
        "synapse_encryption_enabled_by_default_for_room_type",
    ),
    "Element on the homeserver's host name": (
        _with(matrix_element_fqdn="matrix.example.gouv.fr"),
        "Element web needs its own host name",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inventory_is_stopped_before_any_host_is_contacted(tmp_path, case):
    settings, message = CASES[case]
    result = _site(_write_inventory(tmp_path, settings))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in " ".join(output.split()), f"expected {message!r} in:\n{output}"
    assert "UNREACHABLE" not in output, f"a host was contacted:\n{output}"
    assert "changed=1" not in output and "PLAY [Deploy" not in output, output


def test_missing_tier_group_is_stopped(tmp_path):
    inventory = _write_inventory(tmp_path, _valid_settings(), groups=("matrix_db", "matrix_homeserver", "matrix_proxy"))
    result = _site(inventory)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "at least one host in each of matrix_db, matrix_homeserver, matrix_turn, matrix_proxy" in output, output
    assert "matrix_turn=0" in output, output
    assert "UNREACHABLE" not in output, output


def test_valid_inventory_passes_validation_then_needs_the_hosts(tmp_path):
    """Control: the same inventory, valid, gets through every check and only then
    fails because its hosts are unreachable (so the cases above fail for their reason)."""
    result = _site(_write_inventory(tmp_path, _valid_settings()))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "PLAY [Check the hosts]" in output, output
    assert "UNREACHABLE" in output, output
    assert "failed=1" not in output.split("PLAY [Check the hosts]")[0], output
