"""What an operator checks on each tier after a deployment.

Behaviour, not files: services answer, sockets listen only where they should,
the database refuses every host but the homeserver, secrets are not readable
by others, the sandbox is really applied.
"""
import hashlib
import json
import re

import pytest

from conftest import REPO, address_of, first, hosts_of, journal, server

# A PostgreSQL startup packet (protocol 3.0): the server answers "R" (asks for
# authentication) when pg_hba.conf accepts the client address, "E" (error,
# "no pg_hba.conf entry") otherwise. Sent with the hosts' own python3; with a
# second argument "tls", inside TLS (SSLRequest first, certificate not checked
# here: molecule/shared/tests/test_tls_links.py checks it).
PG_PROBE = r"""
import socket, ssl, struct, sys
try:
    s = socket.create_connection((sys.argv[1], 5432), timeout=5)
except OSError as exc:
    print("REFUSED", exc); sys.exit(0)
if sys.argv[2:] == ["tls"]:
    s.sendall(struct.pack("!ii", 8, 80877103))
    if s.recv(1) != b"S":
        print("NO-TLS"); sys.exit(0)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    s = context.wrap_socket(s)
params = b"user\0synapse\0database\0synapse\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
kind = s.recv(1)
body = s.recv(4096)
if kind == b"R":
    print("AUTH", struct.unpack("!i", body[4:8])[0])
else:
    print("ERROR", body.decode(errors="replace"))
"""


def pg_probe(from_host, address, *tls):
    return server(from_host).check_output("python3 -c %s %s" + " %s" * len(tls), PG_PROBE, address, *tls)


def local_pg_probe(address):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", PG_PROBE, address], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def db_address():
    db = first("matrix_db")
    return "127.0.0.1" if db in hosts_of("matrix_homeserver") else address_of(db)


# --- database tier ---------------------------------------------------------

def test_postgresql_runs_and_has_the_synapse_database_in_utf8_c():
    db = server(first("matrix_db"))
    assert db.service("postgresql@15-main").is_running, journal(first("matrix_db"), "postgresql@15-main")
    row = db.check_output(
        "runuser -u postgres -- psql -Atc \"SELECT pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_database WHERE datname = 'synapse'\""
    )
    assert row == "UTF8|C|C"


def test_postgresql_accepts_the_homeserver(db_address):
    # A remote database accepts the homeserver over TLS only (hostssl).
    tls = () if db_address == "127.0.0.1" else ("tls",)
    for homeserver in hosts_of("matrix_homeserver"):
        answer = pg_probe(homeserver, db_address, *tls)
        # 10 = SASL: scram-sha-256 is asked for, never a cleartext password.
        assert answer.startswith("AUTH 10"), answer


def test_postgresql_refuses_every_other_host():
    db = first("matrix_db")
    others = [h for h in hosts_of("matrix") if h not in hosts_of("matrix_homeserver")]
    address = address_of(db)
    for other in others:
        answer = pg_probe(other, address)
        assert answer.startswith("REFUSED") or "no pg_hba.conf entry" in answer, f"{other}: {answer}"
    # And from outside (the controller, on the same network).
    answer = local_pg_probe(address)
    assert answer.startswith("REFUSED") or "no pg_hba.conf entry" in answer, f"controller: {answer}"


def test_postgresql_listens_only_where_needed():
    db = first("matrix_db")
    sockets = server(db).socket
    listening = [s for s in sockets.get_listening_sockets() if s.endswith(":5432")]
    allowed = {"tcp://127.0.0.1:5432", "tcp://::1:5432"}
    if db not in hosts_of("matrix_homeserver"):
        allowed.add(f"tcp://{address_of(db)}:5432")
    assert set(listening) <= allowed and listening, listening


# --- homeserver tier -------------------------------------------------------

# The host of Synapse's main process: the first homeserver host (the others run workers only,
# test_workers.py).
MAIN = hosts_of("matrix_homeserver")[:1]


@pytest.mark.parametrize("name", MAIN)
def test_synapse_runs_sandboxed_as_its_own_user(name):
    hs = server(name)
    service = hs.service("matrix-synapse")
    assert service.is_running and service.is_enabled, journal(name, "matrix-synapse")
    props = hs.check_output(
        "systemctl show matrix-synapse -p User -p ProtectSystem -p NoNewPrivileges -p PrivateTmp "
        "-p CapabilityBoundingSet -p ProtectHome"
    ).splitlines()
    props = dict(line.split("=", 1) for line in props)
    assert props == {
        "User": "matrix-synapse",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ProtectHome": "yes",
    }
    # The sandbox really applies: inside the service's mount namespace the
    # system is read-only and only the state folder is writable.
    pid = hs.check_output("systemctl show -p MainPID --value matrix-synapse")
    in_ns = "nsenter --target %s --mount -- touch %s"
    denied = hs.run(in_ns, pid, "/etc/matrix-synapse/sandbox-probe")
    assert denied.rc != 0 and "Read-only file system" in denied.stderr, denied.stderr
    allowed = hs.run(in_ns, pid, "/var/lib/matrix-synapse/sandbox-probe")
    assert allowed.rc == 0, allowed.stderr
    hs.run("rm -f /var/lib/matrix-synapse/sandbox-probe")


@pytest.mark.parametrize("name", MAIN)
def test_synapse_runs_the_pinned_release_with_room_for_migrations(name):
    # The live release is the one `current` points at; only it (and, after an upgrade, the
    # previous one) is kept; a start may take 30 minutes (schema migrations), not systemd's 90 s.
    hs = server(name)
    live = hs.check_output("readlink -f /opt/synapse/current")
    version = hs.check_output("/opt/synapse/current/bin/python -c 'import synapse; print(synapse.__version__)'")
    assert live == f"/opt/synapse/venvs/{version}"
    releases = hs.check_output("find /opt/synapse/venvs -mindepth 1 -maxdepth 1 -type d").split()
    previous = hs.run("readlink -e /opt/synapse/previous").stdout.strip()
    assert sorted(releases) == sorted({live} | ({previous} if previous else set()))
    assert hs.check_output("systemctl show -p TimeoutStartUSec --value matrix-synapse") == "30min"


# What the live virtualenv holds and sees: pip's own list, each file's origin, and sys.path.
VENV_PROBE = r"""
import json, os, subprocess, sys, psycopg2
listed = json.loads(subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json",
                                    "--disable-pip-version-check"], capture_output=True, check=True, text=True).stdout)
print(json.dumps({"packages": {p["name"]: p["version"] for p in listed},
                  "psycopg2": os.path.realpath(psycopg2.__file__),
                  "system_paths": [p for p in sys.path if "dist-packages" in p]}))
"""


def _normalised(name):
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("name", hosts_of("matrix_homeserver"))
def test_synapse_runs_exactly_the_locked_packages(name):
    """Installed with --require-hashes from the role's lock file: every package at its locked
    version, nothing else but pip itself and Debian's psycopg2 (the one system package the
    virtualenv sees, through a link)."""
    hs = server(name)
    version = hs.check_output("/opt/synapse/current/bin/python -c 'import synapse; print(synapse.__version__)'")
    lock = (REPO / "roles" / "synapse" / "files" / "requirements" / f"synapse-{version}.txt").read_text()
    locked = {_normalised(n): v for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) ", lock, re.M)}
    assert hs.check_output("sha256sum /opt/synapse/requirements/%s.txt", version).split()[0] == hashlib.sha256(lock.encode()).hexdigest()
    seen = json.loads(hs.check_output("/opt/synapse/current/bin/python -c %s", VENV_PROBE))
    installed = {_normalised(n): v for n, v in seen["packages"].items()}
    assert {n: installed.get(n) for n in locked} == locked
    assert set(installed) - set(locked) == {"pip", "psycopg2"}, set(installed) - set(locked)
    assert seen["psycopg2"].startswith("/usr/lib/python3/dist-packages/psycopg2/"), seen["psycopg2"]
    assert seen["system_paths"] == [], "the virtualenv sees the system's packages"


@pytest.mark.parametrize("name", MAIN)
def test_synapse_listens_only_on_loopback_or_the_private_address(name):
    hs = server(name)
    listening = [s for s in hs.socket.get_listening_sockets() if s.endswith(":8008")]
    expected = "tcp://127.0.0.1:8008" if name in hosts_of("matrix_proxy") else f"tcp://{address_of(name)}:8008"
    assert listening == [expected]
    address = expected.removeprefix("tcp://").rsplit(":", 1)[0]
    assert hs.check_output("python3 -c %s", f"import urllib.request;print(urllib.request.urlopen('http://{address}:8008/health').read().decode())") == "OK"


@pytest.mark.parametrize("name", hosts_of("matrix_homeserver"))
def test_synapse_secrets_are_private_and_kept_out_of_the_config(name, credentials):
    hs = server(name)
    for secret in ("registration_shared_secret", "macaroon_secret_key", "form_secret", "turn_shared_secret"):
        f = hs.file(f"/etc/matrix-synapse/secrets/{secret}")
        assert (f.user, f.group, f.mode) == ("root", "matrix-synapse", 0o640), secret
    pgpass = hs.file("/etc/matrix-synapse/secrets/pgpass")
    assert (pgpass.user, pgpass.mode) == ("matrix-synapse", 0o600)
    key = hs.file("/etc/matrix-synapse/signing.key")
    assert (key.user, key.mode) == ("matrix-synapse", 0o600)
    config = hs.file("/etc/matrix-synapse/homeserver.yaml")
    assert (config.user, config.group, config.mode) == ("root", "matrix-synapse", 0o640)
    content = config.content_string
    for secret in ("synapse_macaroon_secret_key", "synapse_registration_shared_secret", "synapse_form_secret",
                   "synapse_database_password", "turn_shared_secret"):
        value = (credentials / secret).read_text().strip()
        assert value not in content, f"{secret} is written in homeserver.yaml"
    # Every secret is independent (no two equal).
    values = [p.read_text() for p in credentials.iterdir() if p.is_file()]
    assert len(values) == len(set(values))


@pytest.mark.parametrize("name", MAIN)
def test_synapse_registration_is_closed_and_federation_off(name):
    hs = server(name)
    listening = [s for s in hs.socket.get_listening_sockets() if s.endswith(":8008")][0]
    base = "http://" + listening.removeprefix("tcp://")
    script = (
        "import json, urllib.request, urllib.error\n"
        "def call(path, data=None):\n"
        "    req = urllib.request.Request(%r + path, data=data, headers={'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req).status, ''\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code, e.read().decode()\n"
        "print(json.dumps([call('/_matrix/client/v3/register', b'{}'), call('/_matrix/federation/v1/version')]))\n"
    ) % base
    register, federation = json.loads(hs.check_output("python3 -c %s", script))
    assert register[0] == 403 and "M_FORBIDDEN" in register[1], register
    assert federation[0] in (404, 400), federation


# --- TURN tier -------------------------------------------------------------

@pytest.mark.parametrize("name", hosts_of("matrix_turn"))
def test_coturn_runs_and_listens(name):
    turn = server(name)
    assert turn.service("coturn").is_running, journal(name, "coturn")
    listening = turn.socket.get_listening_sockets()
    assert any(s.startswith("udp://") and s.endswith(":3478") for s in listening), listening
    assert any(s.startswith("tcp://") and s.endswith(":3478") for s in listening), listening
    assert any(s.startswith("tcp://") and s.endswith(":5349") for s in listening), listening
    assert not any(s.endswith(":5766") for s in listening), "the coturn CLI must be off"


# --- proxy tier ------------------------------------------------------------

@pytest.mark.parametrize("name", hosts_of("matrix_proxy"))
def test_nginx_runs_with_a_valid_configuration(name):
    proxy = server(name)
    assert proxy.service("nginx").is_running, journal(name, "nginx")
    assert proxy.run("nginx -t").rc == 0
    key = proxy.file("/etc/ssl/matrix/proxy.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
