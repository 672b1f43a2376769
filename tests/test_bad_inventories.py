"""Wrong inventories are stopped by preflight before any host is contacted.

Each case writes a production-like inventory whose four hosts point at a
closed loopback port: a run that got past validation would try to connect and
report UNREACHABLE. A correct run therefore shows the validation message, no
UNREACHABLE host and nothing changed. The control case proves the same
inventory, when valid, passes validation and only then fails on the hosts.
"""
import datetime
import difflib
import json
import secrets

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import REPO, run, settings_plugin

NAMES = ["matrix.example.gouv.fr", "example.gouv.fr", "element.example.gouv.fr", "turn.example.gouv.fr"]


def _certificate(names=NAMES):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


CHAIN, KEY = _certificate()
# One certificate per tier: the proxy's web names, the TURN name alone, the
# database's (checked against its address only once facts are known).
PROXY_CHAIN, PROXY_KEY = _certificate(NAMES[:3])
TURN_CHAIN, TURN_KEY = _certificate(NAMES[3:])
DB_CHAIN, DB_KEY = _certificate(["db1.example.gouv.fr"])


def _valid_settings():
    return {
        "matrix_environment": "production",
        "matrix_server_name": "example.gouv.fr",
        "matrix_homeserver_fqdn": "matrix.example.gouv.fr",
        "matrix_element_fqdn": "element.example.gouv.fr",
        "matrix_turn_fqdn": "turn.example.gouv.fr",
        "matrix_tls_mode": "provided",
        "matrix_tls_proxy_certificate_chain": PROXY_CHAIN,
        "matrix_tls_proxy_private_key": PROXY_KEY,
        "matrix_tls_turn_certificate_chain": TURN_CHAIN,
        "matrix_tls_turn_private_key": TURN_KEY,
        "matrix_tls_db_certificate_chain": DB_CHAIN,
        "matrix_tls_db_private_key": DB_KEY,
        "matrix_tls_ca_bundle": DB_CHAIN,
        "matrix_synapse_database_password": secrets.token_urlsafe(36),
        "matrix_turn_shared_secret": secrets.token_urlsafe(36),
        "matrix_backup_repository_password": secrets.token_urlsafe(36),
        "matrix_health_check_password": secrets.token_urlsafe(36),
        "synapse_registration_shared_secret": secrets.token_urlsafe(36),
        "synapse_macaroon_secret_key": secrets.token_urlsafe(36),
        "synapse_form_secret": secrets.token_urlsafe(36),
        "matrix_users": [{"name": "admin", "admin": True, "password": secrets.token_urlsafe(24)}],
        # Production needs the networks that may reach SSH (the firewall).
        "matrix_admin_networks": ["192.0.2.0/24"],
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


def _site(inventory, *options):
    return run(["ansible-playbook", "-i", str(inventory / "hosts.yml"), *options, "playbooks/site.yml"])


def _without(key):
    settings = _valid_settings()
    del settings[key]
    return settings


def _with(**changes):
    settings = _valid_settings()
    settings.update(changes)
    return settings


CASES = {
    "workers without Redis": (
        _with(matrix_synapse_workers="small"),
        "Synapse's workers need exactly one host in matrix_redis (found 0)",
    ),
    "unknown worker preset": (
        _with(matrix_synapse_workers="medium"),
        "matrix_synapse_workers is 'medium': use none, small, large or a list of workers",
    ),
    "worker with an unknown duty": (
        _with(matrix_synapse_workers=[{"name": "sync1", "duties": ["synch"]}]),
        "worker sync1 has unknown duties ['synch']",
    ),
    "missing server name": (_without("matrix_server_name"), "matrix_server_name is not set"),
    "invalid host name": (
        _with(matrix_homeserver_fqdn="matrix_hs.example.gouv.fr"),
        'matrix_homeserver_fqdn is "matrix_hs.example.gouv.fr": it must be a fully qualified',
    ),
    "no database password source": (
        _without("matrix_synapse_database_password"),
        "matrix_synapse_database_password is not set: put it in your inventory vault",
    ),
    "misspelt setting": (
        _with(matrix_sever_name="example.gouv.fr"),
        "matrix_sever_name: unknown setting; did you mean matrix_server_name?",
    ),
    "misspelt Synapse setting": (
        _with(synapse_enable_registraton=False),
        "synapse_enable_registraton: unknown setting; did you mean synapse_enable_registration?",
    ),
    # coturn always refuses TCP relays: no such setting, and nothing close.
    "coturn setting that does not exist": (_with(coturn_no_tcp_relays=True), "coturn_no_tcp_relays: unknown setting"),
    "misspelt role prefix": (
        _with(synpase_url_preview_enabled=False),
        "synpase_url_preview_enabled: unknown setting; did you mean synapse_url_preview_enabled?",
    ),
    "matrix setting of the wrong type": (
        _with(matrix_max_upload_size_mb="fifty"),
        "argument 'matrix_max_upload_size_mb' is of type str and we were unable to convert to int",
    ),
    "matrix setting out of its choices": (
        _with(matrix_federation_port=8080),
        "value of matrix_federation_port must be one of: 443, 8448, got: 8080",
    ),
    "account without a name": (
        _with(matrix_users=[{"admin": True, "password": "x" * 24}]),
        "missing required arguments: name found in matrix_users",
    ),
    "no SSH network in production": (_with(matrix_admin_networks=[]), "in production it cannot be empty"),
    "SSH network not in CIDR form": (_with(matrix_admin_networks=["192.0.2.1"]), "in CIDR form"),
    "everyone let past the proxy": (_with(matrix_synapse_direct_networks=["any"]), '"any" and names are refused'),
    "registration opened through the extension in production": (
        _with(synapse_config_extension={"enable_registration": True}),
        "synapse_config_extension changes security-relevant setting(s) enable_registration",
    ),
    "rate limits changed through the extension in production": (
        _with(synapse_config_extension={"rc_login": {"address": {"per_second": 100, "burst_count": 1000}}}),
        "synapse_config_extension changes security-relevant setting(s) rc_login",
    ),
    "waiver without a reason": (
        _with(
            synapse_config_extension={"enable_registration": True},
            synapse_config_extension_waivers=[{"key": "enable_registration", "reason": "  "}],
        ),
        "without a reason: enable_registration",
    ),
    "waiver of a key the extension does not set": (
        _with(synapse_config_extension_waivers=[{"key": "enable_registraton", "reason": "typo"}]),
        "(not set: enable_registraton)",
    ),
    "extension rule turned off in production": (
        _with(synapse_config_extension_strict=False),
        "synapse_config_extension_strict cannot be false in production",
    ),
    "backup repository not a path": (
        _with(backup_repository="backups/matrix"),
        "backup_repository must be an absolute path or sftp:USER@HOST:/PATH",
    ),
    "backup repository key too short": (
        _with(matrix_backup_repository_password="x" * 20),
        "The backup repository key (backup_repository_password) must have at least 32 characters",
    ),
    "staging CA in production": (_with(matrix_tls_mode="internal_ca"), "the internal staging CA is refused in production"),
    "role argument out of its choices": (
        _with(synapse_encryption_enabled_by_default_for_room_type="sometimes"),
        "synapse_encryption_enabled_by_default_for_room_type",
    ),
    "service map naming a group the inventory lacks": (
        _with(matrix_services_extra=[{"name": "node-exporter", "groups": ["matrix_proxys"], "protocol": "tcp",
                                      "ports": [9100], "from_groups": [], "from_networks": ["10.20.40.0/24"]}]),
        "names unknown inventory group(s) matrix_proxys",
    ),
    "service map network not in CIDR form": (
        _with(matrix_services_extra=[{"name": "node-exporter", "groups": ["matrix"], "protocol": "tcp",
                                      "ports": [9100], "from_groups": [], "from_networks": ["10.20.40.0"]}]),
        'neither "any" nor in CIDR form: 10.20.40.0',
    ),
    "baseline waiver of an unknown control": (
        _with(hardening_waivers=[{"id": "HARD-SSH-99", "reason": "tested elsewhere, see ticket 42"}]),
        'hardening_waivers: unknown control ID "HARD-SSH-99"',
    ),
    "Synapse release without a lock file": (
        _with(synapse_version="1.99.0"),
        "No lock file for Synapse 1.99.0",
    ),
    "an extra package index": (
        _with(synapse_pip_extra_index_urls=["https://pypi.example.gouv.fr/simple/"]),
        "synapse_pip_extra_index_urls: removed: Synapse installs from one package index",
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


def _worker_inventory(tmp_path, **changes):
    """Two homeserver hosts (the second of workers only) and Redis."""
    inventory = _write_inventory(tmp_path, _with(matrix_synapse_workers="small", **changes),
                                 groups=("matrix_db", "matrix_homeserver", "matrix_turn", "matrix_proxy", "matrix_redis"))
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["matrix"]["children"]["matrix_homeserver"]["hosts"]["homeserver2.example.gouv.fr"] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return inventory


def test_worker_layout_passes_validation_then_needs_the_hosts(tmp_path):
    secrets = {"matrix_redis_password": "r" * 40, "matrix_synapse_replication_secret": "s" * 40}
    result = _site(_worker_inventory(tmp_path, **secrets))
    output = result.stdout + result.stderr
    assert "PLAY [Check the hosts]" in output, output
    assert "failed=1" not in output.split("PLAY [Check the hosts]")[0], output


def test_worker_layout_without_its_secrets_is_stopped(tmp_path):
    result = _site(_worker_inventory(tmp_path))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "matrix_redis_password is not set: put it in your inventory vault" in output, output
    assert "UNREACHABLE" not in output, output


def _options(role):
    spec_file = REPO / "roles" / role / "meta" / "argument_specs.yml"
    if not spec_file.is_file():
        return {}
    options = {}
    for entry in (yaml.safe_load(spec_file.read_text()).get("argument_specs") or {}).values():
        options.update((entry or {}).get("options") or {})
    return options


def test_every_role_preflight_runs_before_any_host_is_contacted():
    """Each role's checks (tasks/preflight.yml, with its argument spec) are
    included in the validation play: a new role cannot be left out."""
    plays = yaml.safe_load((REPO / "playbooks" / "preflight.yml").read_text())
    validation = next(play for play in plays if play["gather_facts"] is False)
    included = {
        task["ansible.builtin.include_role"]["name"]
        for task in validation["tasks"]
        if task.get("ansible.builtin.include_role", {}).get("tasks_from") == "preflight"
    }
    roles = {p.parent.parent.name for p in (REPO / "roles").glob("*/tasks/preflight.yml")}
    assert roles <= included, f"not checked in preflight: {sorted(roles - included)}"


@pytest.mark.parametrize("inventory", ["inventories/staging", "inventories/example"])
def test_shipped_inventories_use_only_known_settings(inventory):
    """The inventories the project ships pass the name check (with the shared wiring)."""
    result = run(["ansible-inventory", "-i", inventory, "--playbook-dir", "playbooks", "--list"])
    assert result.returncode == 0, result.stderr
    names = {name for variables in json.loads(result.stdout)["_meta"]["hostvars"].values() for name in variables}
    assert "matrix_server_name" in names and "synapse_server_name" in names, sorted(names)
    assert settings_plugin().matrix_unknown_settings(sorted(names)) == []


@pytest.mark.parametrize("role", ["hardening", "nftables"])
def test_misspelt_baseline_setting_is_stopped(tmp_path, role):
    """A typo in a hardening or firewall setting must not leave a control off
    without a word (the roles' options are read now, not kept in this test)."""
    options = _options(role)
    if not options:
        pytest.skip(f"roles/{role} has no argument spec yet")
    # Drop one letter in the middle of each name; keep the first typo whose
    # closest valid name is the original (not a sibling such as _ipv4/_ipv6).
    for option in sorted(options):
        cut = (len(role) + 1 + len(option)) // 2
        typo = option[:cut] + option[cut + 1:]
        if difflib.get_close_matches(typo, list(options), n=1, cutoff=0.8) == [option]:
            break
    else:
        pytest.fail(f"no option of {role} gives an unambiguous typo: {sorted(options)}")
    value = options[option].get("default", "x")
    result = _site(_write_inventory(tmp_path, _with(**{typo: value})))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert f"{typo}: unknown setting; did you mean {option}?" in output, output
    assert "UNREACHABLE" not in output, output


def test_waived_extension_key_passes_validation_and_is_named(tmp_path):
    """In production a security-relevant extension key with a waiver and its
    reason gets through validation, and the run names the waiver."""
    reason = "Self-registration for the pilot month, closed again by ticket 4711"
    settings = _with(
        synapse_config_extension={"enable_registration": True},
        synapse_config_extension_waivers=[{"key": "enable_registration", "reason": reason}],
    )
    result = _site(_write_inventory(tmp_path, settings))
    output = result.stdout + result.stderr
    validation = " ".join(output.split("PLAY [Check the hosts]")[0].split())
    assert "PLAY [Check the hosts]" in output, output
    assert "UNREACHABLE" in output, output
    assert "failed=1" not in validation, output
    assert f"security-relevant setting(s): enable_registration (waived: {reason})" in validation, output


def test_staging_lists_the_extension_keys_without_refusing_them(tmp_path):
    """Staging (the Molecule scenarios raise rc_login and rc_invites) is not
    production: the keys are named, the run goes on."""
    settings = _with(
        matrix_environment="staging",
        synapse_config_extension={
            "rc_login": {"address": {"per_second": 1, "burst_count": 50}},
            "rc_invites": {"per_user": {"per_second": 1, "burst_count": 50}},
        },
    )
    result = _site(_write_inventory(tmp_path, settings))
    output = result.stdout + result.stderr
    validation = " ".join(output.split("PLAY [Check the hosts]")[0].split())
    assert "UNREACHABLE" in output, output
    assert "failed=1" not in validation, output
    assert "security-relevant setting(s): rc_invites (not waived: allowed because" in validation, output
    assert "rc_login (not waived" in validation, output


# Every value an operator keeps in the vault.
SECRET_KEYS = [
    "matrix_synapse_database_password",
    "matrix_turn_shared_secret",
    "matrix_backup_repository_password",
    "matrix_health_check_password",
    "synapse_registration_shared_secret",
    "synapse_macaroon_secret_key",
    "synapse_form_secret",
]


def _vaulted_inventory(path, changes):
    """A production inventory whose vault holds canaries: unique strings that
    must never appear in the output. Returns (inventory, password file, canaries)."""
    canaries = {key: f"CANARY{secrets.token_hex(16)}" for key in SECRET_KEYS}
    user_password = f"CANARY{secrets.token_hex(16)}"
    keys = {
        "matrix_tls_proxy_private_key": PROXY_KEY,
        "matrix_tls_turn_private_key": TURN_KEY,
        "matrix_tls_db_private_key": DB_KEY,
    }
    vault = dict(canaries, **keys)
    vault["matrix_users"] = [
        {"name": "admin", "admin": True, "password": user_password},
        {"name": "alice", "password": f"CANARY{secrets.token_hex(16)}"},
    ]
    settings = {k: v for k, v in _valid_settings().items() if k not in vault}
    settings.update(changes)
    vault.update({k: v for k, v in changes.items() if k in vault})
    inventory = _write_inventory(path, settings)
    password_file = path / "vault-password"
    password_file.write_text(f"CANARY{secrets.token_hex(16)}\n")
    vault_file = inventory / "group_vars" / "matrix" / "vault.yml"
    vault_file.write_text(yaml.safe_dump(vault))
    encrypted = run(["ansible-vault", "encrypt", "--vault-password-file", str(password_file), str(vault_file)])
    assert encrypted.returncode == 0, encrypted.stderr
    assert "$ANSIBLE_VAULT" in vault_file.read_text()
    values = list(canaries.values()) + [u["password"] for u in vault["matrix_users"]]
    values.append(password_file.read_text().strip())
    # The keys: every line of their PEM bodies, except the public key's bytes,
    # also found in the certificates (which may be printed).
    public = "".join(settings[k] for k in settings if k.endswith("_certificate_chain")).replace("\n", "")
    values += [
        line for key in keys.values() for line in key.splitlines()
        if line and not line.startswith("-----") and line not in public
    ]
    return inventory, password_file, values


STOPS = {
    # Late in validation: every secret-handling check before it has run.
    "a role's checks": ({"nginx_hsts_max_age": -1}, "nginx: Element web needs its own host name"),
    "the extension rule, with a secret in the extension": (
        {"synapse_config_extension": {"enable_registration": True, "form_secret": "CANARY-in-extension-0123456789abcdef"}},
        "synapse_config_extension changes security-relevant setting(s) enable_registration, form_secret",
    ),
    "the spec of an account": (
        {"matrix_users": [{"name": "admin", "password": "CANARY-user-0123456789abcdef", "admn": True}]},
        "admn",
    ),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_no_secret_is_printed_at_vvv_when_validation_stops(tmp_path, stop):
    changes, message = STOPS[stop]
    inventory, password_file, canaries = _vaulted_inventory(tmp_path, changes)
    canaries += ["CANARY-in-extension-0123456789abcdef", "CANARY-user-0123456789abcdef"]
    result = _site(inventory, "-vvv", "--vault-password-file", str(password_file))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in " ".join(output.split()), f"expected {message!r} in:\n{output}"
    assert "UNREACHABLE" not in output, output
    leaked = [c for c in canaries if c in output]
    assert not leaked, f"secret(s) printed: {leaked}"


def test_no_secret_is_printed_at_vvv_past_validation(tmp_path):
    """Control of the test above: with the same vault, validation passes (every
    check has handled the secrets) and the run reaches the hosts."""
    inventory, password_file, canaries = _vaulted_inventory(tmp_path, {})
    result = _site(inventory, "-vvv", "--vault-password-file", str(password_file))
    output = result.stdout + result.stderr
    assert "PLAY [Check the hosts]" in output, output
    assert "UNREACHABLE" in output, output
    assert "failed=1" not in output.split("PLAY [Check the hosts]")[0], output
    leaked = [c for c in canaries if c in output]
    assert not leaked, f"secret(s) printed: {leaked}"


# One certificate per tier (group_vars/all/tls.yml): the TURN host never gets
# the web key, so each tier's certificate is checked against its own names.
TLS_CASES = {
    "TURN certificate that does not cover the TURN name": (
        _with(matrix_tls_turn_certificate_chain=PROXY_CHAIN, matrix_tls_turn_private_key=PROXY_KEY),
        "turn: the provided certificate",
        "(not covered: turn.example.gouv.fr)",
    ),
    "proxy certificate that does not cover the web names": (
        _with(matrix_tls_proxy_certificate_chain=TURN_CHAIN, matrix_tls_proxy_private_key=TURN_KEY),
        "proxy: the provided certificate",
        "(not covered: matrix.example.gouv.fr, example.gouv.fr, element.example.gouv.fr)",
    ),
    "TURN key that does not match its certificate": (
        _with(matrix_tls_turn_private_key=PROXY_KEY),
        "turn: the provided certificate",
        "must match the provided key",
    ),
    "no TURN certificate in provided mode": (
        _without("matrix_tls_turn_certificate_chain"),
        "matrix_tls_mode is provided: set matrix_tls_turn_certificate_chain",
        "the TURN host's only turn.example.gouv.fr",
    ),
    "no CA bundle for the remote database": (
        _without("matrix_tls_ca_bundle"),
        "matrix_tls_mode is provided: set matrix_tls_ca_bundle",
        "the CA that signs the database certificate",
    ),
    "non-TLS access to the database from the network": (
        _with(postgresql_hba_entries=[{"type": "host", "database": "synapse", "user": "synapse", "address": "10.0.0.5/32"}]),
        "'host synapse synapse 10.0.0.5/32 scram-sha-256' is refused",
        "needs type hostssl, never host",
    ),
    "Synapse not verifying the remote database": (
        _with(synapse_database_sslmode="require"),
        "synapse_database_sslmode is require for the database at",
        "needs verify-full",
    ),
    "the former single certificate for every name": (
        _with(matrix_tls_certificate_chain=CHAIN),
        "matrix_tls_certificate_chain: unknown setting",
        "did you mean",
    ),
}


@pytest.mark.parametrize("case", list(TLS_CASES))
def test_bad_tier_certificate_is_stopped_before_any_host_is_contacted(tmp_path, case):
    settings, *messages = TLS_CASES[case]
    result = _site(_write_inventory(tmp_path, settings))
    output = result.stdout + result.stderr
    flat = " ".join(output.split())
    assert result.returncode != 0, output
    for message in messages:
        assert message in flat, f"expected {message!r} in:\n{output}"
    assert "UNREACHABLE" not in output, f"a host was contacted:\n{output}"
    assert "PLAY [Deploy" not in output, output
