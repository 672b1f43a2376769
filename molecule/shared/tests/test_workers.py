"""Synapse's workers, as an operator checks them (scenarios with workers; skipped otherwise).

Which process answered a request is read from Synapse's own access log: each worker's listener
is tagged with its name (logger synapse.access.http.<name>), and every unit writes to the
journal under its own identifier (matrix-synapse, matrix-synapse-<name>). A request carries a
unique marker in its query string (Synapse ignores unknown parameters and logs the URI), so the
test finds the one line that request produced, on whichever host it was.

The expected process for each endpoint class comes from the layout the playbooks compute
(playbooks/filter_plugins/matrix_workers.py, from the inventory's matrix_synapse_workers).
"""
import http.client
import importlib.util
import json
import socket
import ssl
import time
import uuid

import pathlib
import sys

import pytest
import yaml

from conftest import CREDENTIALS, HOMESERVER_FQDN, REPO, RUNNER, SERVER_NAME, address_of, first, hosts_of, journal, server

_SPEC = importlib.util.spec_from_file_location("matrix_workers", REPO / "playbooks" / "filter_plugins" / "matrix_workers.py")
_workers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_workers)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from unit_security import MAX_EXPOSURE, exposure, open_items  # noqa: E402

HOMESERVERS = hosts_of("matrix_homeserver")
# The scenario's inventory does not load the shared wiring (the playbooks' group_vars): its
# fixed ports come from group_vars/all/matrix.yml unless the inventory sets them.
_WIRING = yaml.safe_load((REPO / "group_vars" / "all" / "matrix.yml").read_text())


def _port(name):
    return int(RUNNER.get_variables(HOMESERVERS[0]).get(name, _WIRING[name])) if HOMESERVERS else int(_WIRING[name])


HTTP_BASE = _port("matrix_synapse_worker_http_port_base")
REPLICATION_BASE = _port("matrix_synapse_worker_replication_port_base")
MAIN_REPLICATION_PORT = _port("matrix_synapse_replication_port")
REDIS_PORT = _port("matrix_redis_port")
LAYOUT = _workers.matrix_synapse_worker_layout(
    {h: RUNNER.get_variables(h).get("matrix_synapse_workers", "none") for h in HOMESERVERS}, HOMESERVERS,
    HTTP_BASE, REPLICATION_BASE, MAIN_REPLICATION_PORT)
WORKERS = LAYOUT["workers"]
pytestmark = pytest.mark.skipif(not WORKERS, reason="no Synapse workers in this scenario")


def _named(duty):
    return {w["name"] for w in WORKERS if duty in w["duties"]}


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the proxy's address with the homeserver's name (SNI, Host, certificate)."""

    def __init__(self, address):
        context = ssl.create_default_context(cafile=str(CREDENTIALS / "ca" / "ca.crt"))
        super().__init__(HOMESERVER_FQDN, 443, context=context, timeout=60)
        self._address = address

    def connect(self):
        self.sock = self._context.wrap_socket(socket.create_connection((self._address, 443), self.timeout),
                                              server_hostname=self.host)


class Client:
    def __init__(self):
        self.address = address_of(first("matrix_proxy"))
        self.token = None

    def call(self, method, path, body=None, marker=None, raw=None, content_type="application/json"):
        """(status, JSON answer) of a request through the proxy, the marker in its query string."""
        if marker:
            path += ("&" if "?" in path else "?") + f"probe={marker}"
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = _Connection(self.address)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            text = response.read()
            return response.status, (json.loads(text) if text.startswith(b"{") else {})
        finally:
            connection.close()


def answered_by(marker, timeout=20):
    """The processes whose access log has the marked request: {(host, identifier, listener tag)}."""
    deadline = time.monotonic() + timeout
    while True:
        found = set()
        for host in HOMESERVERS:
            out = server(host).run(
                "journalctl --since=-10min --no-pager -o json --output-fields=MESSAGE,SYSLOG_IDENTIFIER -g %s", marker)
            for line in out.stdout.splitlines():
                entry = json.loads(line)
                message = entry.get("MESSAGE", "")
                if "synapse.access.http." in message:
                    tag = message.split("synapse.access.http.", 1)[1].split()[0]
                    found.add((host, entry.get("SYSLOG_IDENTIFIER", ""), tag))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def process_of(marker):
    found = answered_by(marker)
    assert len(found) == 1, f"request {marker}: logged by {found or 'no process'}"
    host, identifier, tag = found.pop()
    name = identifier.removeprefix("matrix-synapse-") if identifier != "matrix-synapse" else "main"
    # The unit and the listener agree (a worker's listener carries its name; the main one, its port).
    assert name == "main" or tag == name, (identifier, tag)
    if name != "main":
        assert {w["host"] for w in WORKERS if w["name"] == name} == {host}, (name, host)
    return name


@pytest.fixture(scope="module")
def alice():
    client = Client()
    password = (CREDENTIALS / "users" / "alice").read_text().strip()
    status, answer = client.call("POST", "/_matrix/client/v3/login", marker="login-" + uuid.uuid4().hex, body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": password,
        "initial_device_display_name": "test_workers"})
    assert status == 200, answer
    client.token = answer["access_token"]
    status, answer = client.call("POST", "/_matrix/client/v3/createRoom", body={"preset": "private_chat"})
    assert status == 200, answer
    client.room = answer["room_id"]
    yield client
    client.call("POST", "/_matrix/client/v3/logout")


@pytest.mark.parametrize("name", [w["name"] for w in WORKERS])
def test_each_worker_runs_in_the_sandbox_of_the_main_process(name):
    worker = next(w for w in WORKERS if w["name"] == name)
    host = server(worker["host"])
    unit = worker["unit"]
    assert host.service(unit).is_running and host.service(unit).is_enabled, journal(worker["host"], unit)
    props = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show %s -p User -p ProtectSystem -p NoNewPrivileges -p PrivateUsers -p CapabilityBoundingSet", unit).splitlines())
    assert props == {"User": "matrix-synapse", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateUsers": "yes",
                     "CapabilityBoundingSet": ""}
    level, verdict, report = exposure(host, unit)
    print(f"{worker['host']}: {unit} exposure {level} {verdict}")
    assert level <= MAX_EXPOSURE, f"{unit} exposure {level} {verdict}\n{open_items(report)}"
    # The main process's host: the worker is part of matrix-synapse.service (stopped and
    # restarted with it, in an upgrade or a restore).
    if worker["host"] == HOMESERVERS[0]:
        assert host.check_output("systemctl show -p PartOf --value %s", unit) == "matrix-synapse.service"


def test_every_homeserver_host_runs_the_release_of_the_main_process():
    """After a deployment or an upgrade (multi-host's drill runs first), no worker host is left on
    another release."""
    releases = {name: server(name).check_output("readlink -f /opt/synapse/current") for name in HOMESERVERS}
    assert len(set(releases.values())) == 1, releases


def test_only_the_first_homeserver_host_runs_the_main_process():
    for name in HOMESERVERS:
        running = server(name).service("matrix-synapse").is_running
        assert running == (name == HOMESERVERS[0]), name


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("initial sync", "initial_sync"),
        ("incremental sync", "sync"),
        ("client read", "client"),
        ("message sent", "client"),
        ("typing", "typing"),
        ("media upload", "media"),
        ("no worker class", "main"),
    ],
)
def test_each_endpoint_class_is_answered_by_its_worker(alice, what, expected):
    marker = uuid.uuid4().hex
    user = f"@alice:{SERVER_NAME}"
    if what == "initial sync":
        status, answer = alice.call("GET", "/_matrix/client/v3/sync?timeout=0", marker=marker)
    elif what == "incremental sync":
        _, first_sync = alice.call("GET", "/_matrix/client/v3/sync?timeout=0")
        status, answer = alice.call("GET", f"/_matrix/client/v3/sync?timeout=0&since={first_sync['next_batch']}", marker=marker)
    elif what == "client read":
        status, answer = alice.call("GET", "/_matrix/client/v3/joined_rooms", marker=marker)
    elif what == "message sent":
        status, answer = alice.call("PUT", f"/_matrix/client/v3/rooms/{alice.room}/send/m.room.message/{marker}",
                                    body={"msgtype": "m.text", "body": "through the workers"}, marker=marker)
    elif what == "typing":
        status, answer = alice.call("PUT", f"/_matrix/client/v3/rooms/{alice.room}/typing/{user}",
                                    body={"typing": True, "timeout": 1000}, marker=marker)
    elif what == "media upload":
        status, answer = alice.call("POST", "/_matrix/media/v3/upload?filename=probe.txt", raw=b"workers",
                                    content_type="text/plain", marker=marker)
    else:
        status, answer = alice.call("GET", "/_matrix/client/v3/thirdparty/protocols", marker=marker)
    assert status == 200, (what, answer)
    expected_names = {"main"} if expected == "main" else _named(expected)
    assert expected_names, f"the layout has no worker for {expected}"
    assert process_of(marker) in expected_names


def test_a_stopped_sync_worker_leaves_clients_syncing_through_the_others(alice):
    pool = sorted(_named("sync"))
    if len(pool) < 2:
        pytest.skip("one sync worker only")
    _, first_sync = alice.call("GET", "/_matrix/client/v3/sync?timeout=0")
    since = first_sync["next_batch"]
    marker = uuid.uuid4().hex
    assert alice.call("GET", f"/_matrix/client/v3/sync?timeout=0&since={since}", marker=marker)[0] == 200
    serving = process_of(marker)
    worker = next(w for w in WORKERS if w["name"] == serving)
    host = server(worker["host"])
    unit = worker["unit"]
    host.check_output("systemctl stop %s", unit)
    try:
        for _ in range(3):
            marker = uuid.uuid4().hex
            status, answer = alice.call("GET", f"/_matrix/client/v3/sync?timeout=0&since={since}", marker=marker)
            assert status == 200, answer
            assert process_of(marker) in set(pool) - {serving}
    finally:
        host.check_output("systemctl start %s", unit)
    assert host.service(unit).is_running


def test_replication_and_redis_listen_only_for_the_homeserver_hosts():
    """The firewall matrix (test_network_policy.py) probes these ports from every host; here, the
    listeners themselves: loopback and the private address, never every interface."""
    for name in HOMESERVERS + hosts_of("matrix_redis"):
        listening = server(name).socket.get_listening_sockets()
        wide = [s for s in listening if s.startswith(("tcp://0.0.0.0:", "tcp://:::")) and
                int(s.rsplit(":", 1)[1]) in {REDIS_PORT, MAIN_REPLICATION_PORT} | {w["http_port"] for w in WORKERS}
                | {w["replication_port"] for w in WORKERS if w["replication_port"]}]
        assert wide == [], (name, wide)
