"""What an operator checks after roles/postgresql ran (molecule/role-postgresql).

Behaviour first: the cluster runs and listens only where configured, the
database has the encoding and locale Synapse requires, the one allowed client
logs in with SCRAM (and only with the right password), every other client is
refused, and no rule lets anyone in without a password.
"""
import json
import socket

import pytest

SERVICE = "postgresql@15-main"
PORT = 5432

# Runs on the host with its python3-psycopg2 (installed by the role): connect
# over TCP and report the authentication and TLS the server used, or the error.
LOGIN = r"""
import json, sys
import psycopg2
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
try:
    conn = psycopg2.connect(host=sys.argv[1], port=int(sys.argv[2]), dbname="synapse",
                            user="synapse", password=sys.argv[3], connect_timeout=5, **extra)
except psycopg2.OperationalError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
    sys.exit(0)
cur = conn.cursor()
cur.execute("SELECT current_user, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
user, ssl, version = cur.fetchone()
print(json.dumps({"ok": True, "user": user, "ssl": ssl, "tls": version}))
"""


def psql(host, query, database="postgres"):
    """Run a read-only query as the postgres OS user (peer over the socket)."""
    return host.check_output("runuser -u postgres -- psql -d %s -XAtc %s", database, query)


def login(host, address, password, **libpq):
    """Log in over TCP; libpq: extra connection parameters (sslmode, sslrootcert...)."""
    return json.loads(
        host.check_output("python3 -c %s %s %s %s %s", LOGIN, address, str(PORT), password, json.dumps(libpq))
    )


@pytest.fixture(scope="module")
def private_address(host):
    facts = host.ansible("setup", "gather_subset=network")["ansible_facts"]
    return facts["ansible_default_ipv4"]["address"]


@pytest.fixture(scope="module")
def password(host):
    return host.ansible.get_variables()["molecule_postgresql_password"]


def test_cluster_is_running_and_enabled(host):
    service = host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled
    assert host.service("postgresql").is_enabled


def test_listens_only_on_loopback_and_the_private_address(host, private_address):
    sockets = {s for s in host.socket.get_listening_sockets() if s.endswith(f":{PORT}")}
    addresses = {s.removeprefix("tcp://").rsplit(":", 1)[0] for s in sockets}
    assert private_address in addresses
    assert addresses <= {"127.0.0.1", "::1", private_address}, sockets


def test_database_is_utf8_with_locale_c_and_owned_by_synapse(host):
    row = psql(
        host,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba) "
        "FROM pg_database WHERE datname = 'synapse'",
    )
    assert row == "UTF8|C|C|synapse"


def test_only_the_owner_may_connect_to_the_database(host):
    # No PUBLIC entry ("=...c..."): CONNECT was revoked from PUBLIC.
    acl = psql(host, "SELECT datacl FROM pg_database WHERE datname = 'synapse'")
    assert not [entry for entry in acl.strip("{}").split(",") if entry.startswith("=")], acl


def test_password_is_stored_as_scram(host):
    stored = psql(host, "SELECT rolpassword FROM pg_authid WHERE rolname = 'synapse'")
    assert stored.startswith("SCRAM-SHA-256$")
    assert psql(host, "SHOW password_encryption") == "scram-sha-256"


def test_user_is_not_privileged(host):
    flags = psql(
        host,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin "
        "FROM pg_roles WHERE rolname = 'synapse'",
    )
    assert flags == "f|f|f|f|t"


def test_allowed_client_logs_in_with_scram_over_tls(host, private_address, password):
    result = login(host, private_address, password)
    assert result["ok"], result
    assert result["user"] == "synapse"
    # The only rule for this address is hostssl: libpq's default (prefer) gets TLS.
    assert result["ssl"] is True and result["tls"] == "TLSv1.3", result
    # The server asked for SASL (SCRAM-SHA-256), not a clear-text or MD5 password.
    # Debian's cluster logs to its own file; log_connections names the method.
    log = host.check_output("tail -n 200 /var/log/postgresql/postgresql-15-main.log")
    assert 'connection authenticated: identity="synapse" method=scram-sha-256' in log


def test_wrong_password_is_refused(host, private_address, password):
    result = login(host, private_address, password + "-wrong")
    assert not result["ok"]
    assert 'password authentication failed for user "synapse"' in result["error"]


def test_unlisted_address_is_refused_even_with_the_right_password(host, password):
    # 127.0.0.1 is listened on but has no pg_hba.conf entry for synapse.
    result = login(host, "127.0.0.1", password)
    assert not result["ok"]
    assert "no pg_hba.conf entry" in result["error"], result


def test_controller_is_refused_before_authentication(private_address):
    """From outside (the controller): the unit's IP filter (IPAddressDeny=any, the
    controller not in IPAddressAllow) drops the packets, so the connection is not
    even established - no startup packet reaches PostgreSQL. (pg_hba.conf's own
    refusal is checked from loopback, above.)"""
    with pytest.raises(TimeoutError):
        socket.create_connection((private_address, PORT), timeout=5).close()


def test_hba_has_no_passwordless_or_weak_rule(host):
    methods = psql(host, "SELECT DISTINCT auth_method FROM pg_hba_file_rules").splitlines()
    assert set(methods) <= {"peer", "scram-sha-256"}, methods
    assert psql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    lines = [
        line.split()
        for line in host.file("/etc/postgresql/15/main/pg_hba.conf").content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert not [line for line in lines if line[-1] in ("trust", "password", "md5", "ident")]
    # The only local rule is the postgres superuser over peer.
    assert [line for line in lines if line[0] == "local"] == [["local", "all", "postgres", "peer"]]


def test_managed_settings_are_live(host):
    assert psql(host, "SHOW max_connections") == "50"
    assert psql(host, "SHOW log_connections") == "on"
    drop_in = host.file("/etc/postgresql/15/main/conf.d/50-ansible.conf")
    assert drop_in.user == "postgres" and drop_in.mode == 0o644
    # Nothing pending: every setting in the files is the one the server runs with.
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_local_fact_is_published(host, private_address):
    fact = json.loads(host.file("/etc/ansible/facts.d/postgresql.fact").content_string)
    assert fact["version"] == "15"
    assert fact["port"] == PORT
    assert fact["listen_addresses"] == ["localhost", private_address]


# --- TLS: the network only over TLS, with a certificate a client can verify ---

STAGING_CA = "/usr/local/share/ca-certificates/matrix-staging-ca.crt"


def test_non_tls_connection_from_the_network_is_refused(host, private_address, password):
    result = login(host, private_address, password, sslmode="disable")
    assert not result["ok"], result
    assert "no pg_hba.conf entry" in result["error"] and "no encryption" in result["error"], result


def test_certificate_verifies_against_the_ca_for_the_address(host, private_address, password):
    """verify-full by IP address: the certificate carries it as an iPAddress SAN (libpq >= 14)."""
    result = login(host, private_address, password, sslmode="verify-full", sslrootcert=STAGING_CA)
    assert result["ok"], result
    assert result["ssl"] is True and result["tls"] == "TLSv1.3", result


def test_certificate_from_another_ca_fails_verify_full(host, private_address, password):
    host.check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=other "
        "-keyout /tmp/other-ca.key -out /tmp/other-ca.crt"
    )
    result = login(host, private_address, password, sslmode="verify-full", sslrootcert="/tmp/other-ca.crt")
    assert not result["ok"], result
    assert "certificate verify failed" in result["error"], result


def test_tls_older_than_the_minimum_is_refused(host, private_address, password):
    result = login(host, private_address, password, sslmode="require", ssl_max_protocol_version="TLSv1.2")
    assert not result["ok"], result


def test_tls_settings_are_live(host):
    assert psql(host, "SHOW ssl") == "on"
    assert psql(host, "SHOW ssl_cert_file") == "/etc/ssl/matrix/postgresql.crt"
    assert psql(host, "SHOW ssl_key_file") == "/etc/ssl/matrix/postgresql.key"
    assert psql(host, "SHOW ssl_min_protocol_version") == "TLSv1.3"
    key = host.file("/etc/ssl/matrix/postgresql.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)


def test_network_rules_are_hostssl_only(host):
    """No rule lets a client on the network in without TLS: "host" lines are loopback only."""
    rules = psql(host, "SELECT type, coalesce(address, '') FROM pg_hba_file_rules WHERE type <> 'local'")
    for rule in rules.splitlines():
        kind, address = rule.split("|")
        assert kind == "hostssl" or address in ("127.0.0.1", "::1"), rules
