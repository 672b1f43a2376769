"""Links between tiers are encrypted and verified; each tier holds only its keys.

- A remote database takes the homeserver over TLS only: a non-TLS connection
  from the homeserver gets "no pg_hba.conf entry ... no encryption", a TLS one
  that trusts another CA fails verify-full, and Synapse's own live sessions are
  encrypted (pg_stat_ssl). On a shared host Synapse stays on loopback.
- The TURN host's certificate (seen on 5349 from outside) covers the TURN name
  only, the proxy's (443) the web names only, and a TURN host that is not a
  proxy holds no web key.
"""
import json
import re
import socket
import ssl

import pytest

from conftest import (
    CREDENTIALS,
    ELEMENT_FQDN,
    HOMESERVER_FQDN,
    SERVER_NAME,
    TURN_FQDN,
    address_of,
    first,
    hosts_of,
    server,
)

WEB_NAMES = {HOMESERVER_FQDN, SERVER_NAME, ELEMENT_FQDN}
CA_FILE = str(CREDENTIALS / "ca" / "ca.crt")
SITE_CA_ON_HOST = "/etc/ssl/matrix/ca.crt"

DB = first("matrix_db")
HOMESERVER = first("matrix_homeserver")
DB_REMOTE = DB != HOMESERVER
remote_only = pytest.mark.skipif(not DB_REMOTE, reason="database on the homeserver's host: loopback, no TLS")

# Run on the homeserver with Synapse's own driver (Debian's python3-psycopg2,
# libpq 15): connect as Synapse does, with the given sslmode and root CA, and
# report what the session got, or the error.
CONNECT = r"""
import json, sys
import psycopg2
host, password, sslmode, rootcert = sys.argv[1:5]
try:
    conn = psycopg2.connect(host=host, port=5432, dbname="synapse", user="synapse", password=password,
                            sslmode=sslmode, sslrootcert=rootcert or None, connect_timeout=5)
except psycopg2.OperationalError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
    sys.exit(0)
cur = conn.cursor()
cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
ssl, version = cur.fetchone()
print(json.dumps({"ok": True, "ssl": ssl, "tls": version}))
"""

# A throw-away CA that signed nothing the database holds.
OTHER_CA = (
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
    "-subj /CN=not-the-site-ca -keyout /tmp/tls-links-other-ca.key -out /tmp/tls-links-other-ca.crt"
)


def connect(sslmode, rootcert=""):
    password = (CREDENTIALS / "synapse_database_password").read_text().strip()
    output = server(HOMESERVER).check_output(
        "python3 -c %s %s %s %s %s", CONNECT, address_of(DB), password, sslmode, rootcert
    )
    return json.loads(output)


def synapse_sessions():
    """(client address, ssl, TLS version) of Synapse's live database sessions."""
    rows = server(DB).check_output(
        "runuser -u postgres -- psql -XAtF ' ' -c %s",
        "SELECT coalesce(host(a.client_addr), 'local'), s.ssl, coalesce(s.version, '-') "
        "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'synapse'",
    )
    return [tuple(row.split()) for row in rows.splitlines() if row.strip()]


def peer_certificate(address, port, name):
    """The server's certificate as the controller sees it (SNI = name), verified with the staging CA."""
    context = ssl.create_default_context(cafile=CA_FILE)
    with socket.create_connection((address, port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=name) as tls:
            return tls.getpeercert()


def dns_names(certificate):
    return {value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}


# --- homeserver -> database ------------------------------------------------

@remote_only
def test_non_tls_connection_from_the_homeserver_is_refused():
    result = connect("disable")
    assert not result["ok"], result
    assert "no pg_hba.conf entry" in result["error"] and "no encryption" in result["error"], result


@remote_only
def test_tls_connection_trusting_another_ca_fails_verify_full():
    server(HOMESERVER).check_output(OTHER_CA)
    result = connect("verify-full", "/tmp/tls-links-other-ca.crt")
    assert not result["ok"], result
    assert "certificate verify failed" in result["error"], result


@remote_only
def test_verify_full_with_the_site_ca_succeeds_over_tls_1_3():
    """Control case: the database certificate matches the address Synapse uses and the site CA."""
    result = connect("verify-full", SITE_CA_ON_HOST)
    assert result["ok"], result
    assert result["ssl"] is True and result["tls"] == "TLSv1.3", result


@remote_only
def test_synapse_connects_with_verify_full_against_the_site_ca():
    config = server(HOMESERVER).check_output("cat /etc/matrix-synapse/homeserver.yaml")
    assert "sslmode: verify-full" in config, config
    assert f"sslrootcert: {SITE_CA_ON_HOST}" in config, config
    # The homeserver holds the CA certificate only, no database key.
    files = server(HOMESERVER).check_output("ls /etc/ssl/matrix").split()
    assert "ca.crt" in files and "postgresql.key" not in files, files


@remote_only
def test_synapse_live_database_sessions_are_encrypted():
    sessions = synapse_sessions()
    homeserver_address = address_of(HOMESERVER)
    synapse = [s for s in sessions if s[0] == homeserver_address]
    assert synapse, sessions
    assert all(ssl_on == "t" and version in ("TLSv1.3",) for _, ssl_on, version in synapse), sessions


def test_synapse_on_the_database_host_stays_on_loopback():
    if DB_REMOTE:
        pytest.skip("database on its own host: covered by the TLS tests above")
    sessions = synapse_sessions()
    assert sessions, sessions
    assert all(address in ("127.0.0.1", "::1", "local") for address, _, _ in sessions), sessions


# --- one certificate per tier ----------------------------------------------

@pytest.mark.parametrize("name", hosts_of("matrix_turn"))
def test_turn_certificate_covers_the_turn_name_only(name):
    certificate = peer_certificate(address_of(name), 5349, TURN_FQDN)
    assert dns_names(certificate) == {TURN_FQDN}, certificate


@pytest.mark.parametrize("name", hosts_of("matrix_proxy"))
def test_proxy_certificate_covers_the_web_names_only(name):
    certificate = peer_certificate(address_of(name), 443, HOMESERVER_FQDN)
    assert dns_names(certificate) == WEB_NAMES, certificate


@pytest.mark.parametrize("name", hosts_of("matrix_turn"))
def test_turn_host_holds_no_web_key(name):
    host = server(name)
    keys = set(host.check_output("find /etc/ssl/matrix -name '*.key' -printf '%f\\n'").split())
    expected = {"turn.key"}
    if name in hosts_of("matrix_proxy"):
        expected.add("proxy.key")
    if name in hosts_of("matrix_db") and DB_REMOTE:
        expected.add("postgresql.key")
    assert keys == expected, keys
    # And no certificate on it covers a web name unless it is also a proxy.
    if name not in hosts_of("matrix_proxy"):
        for crt in host.check_output("find /etc/ssl/matrix -name '*.crt' ! -name ca.crt").split():
            text = host.check_output("openssl x509 -noout -ext subjectAltName -in %s", crt)
            names = set(re.findall(r"DNS:([^,\s]+)", text))
            assert not names & WEB_NAMES, f"{crt}: {text}"
