"""Synapse's workers behind the proxy: each endpoint class reaches its pool.

converge.yml gives nginx one stand-in per port (prepare.yml): 8008 is the main process, the
pools are sync 8101+8102, initial_sync 8103, client 8104+8105, federation 8106, media 8107,
typing 8108. Each stand-in answers with its port, so the test sees where nginx sent a request,
as a client sends it (TLS, Host, access token).
"""
import contextlib

import pytest

from conftest import HOMESERVER_FQDN

SYNC, INITIAL, CLIENT, FEDERATION, MEDIA, TYPING, MAIN = {8101, 8102}, {8103}, {8104, 8105}, {8106}, {8107}, {8108}, {8008}


def port_of(client, path, method="GET", user="alice", body=None, port=443):
    headers = {"Authorization": f"Bearer syt_{user}_Zm9vYmFy_1a2b3c"}
    response = client.request(HOMESERVER_FQDN, path, method=method, headers=headers, body=body, port=port)
    assert response.status == 200 and response.is_from_upstream(), (path, response.status, response.body[:200])
    return response.json()["port"]


@contextlib.contextmanager
def stopped(host, *ports):
    """The stand-ins of these ports down for the block; up again after, whatever happens."""
    units = [f"fake-synapse@{port}.service" for port in ports]
    try:
        host.check_output(f"systemctl stop {' '.join(units)}")
        yield
    finally:
        host.check_output(f"systemctl start {' '.join(units)}")


@pytest.mark.parametrize(
    ("path", "method", "pool"),
    [
        ("/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=0", "GET", SYNC),
        ("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "POST", SYNC),
        ("/_matrix/client/v3/events?from=s1", "GET", SYNC),
        ("/_matrix/client/v3/sync", "GET", INITIAL),
        ("/_matrix/client/v3/sync?timeout=0", "GET", INITIAL),
        ("/_matrix/client/v3/initialSync", "GET", INITIAL),
        ("/_matrix/client/v3/createRoom", "POST", CLIENT),
        ("/_matrix/client/v3/rooms/%21r%3Aexample.test/send/m.room.message/t1", "PUT", CLIENT),
        ("/_matrix/client/v3/keys/query", "POST", CLIENT),
        ("/_matrix/client/v3/login", "POST", CLIENT),
        ("/_matrix/client/v3/rooms/%21r%3Aexample.test/messages?dir=b", "GET", CLIENT),
        ("/_matrix/client/v3/rooms/%21r%3Aexample.test/typing/%40alice%3Aexample.test", "PUT", TYPING),
        ("/_matrix/media/v3/download/example.test/abc", "GET", MEDIA),
        ("/_matrix/client/v1/media/download/example.test/abc", "GET", MEDIA),
        ("/_matrix/media/v3/upload", "POST", MEDIA),
        # No worker for these: the main process.
        ("/_matrix/client/v3/account/password", "POST", MAIN),
        ("/_matrix/client/v3/pushrules/", "GET", MAIN),
        ("/_matrix/client/v3/sendToDevice/m.room.encrypted/t1", "PUT", MAIN),
    ],
)
def test_each_endpoint_class_reaches_its_pool(client, path, method, pool):
    body = b"{}" if method in ("POST", "PUT") else None
    assert port_of(client, path, method, body=body) in pool


def test_federation_reaches_the_federation_pool_on_both_ports(client):
    for port in (443, 8448):
        assert port_of(client, "/_matrix/federation/v1/version", port=port) in FEDERATION
        assert port_of(client, "/_matrix/federation/v1/send/txn1", "PUT", body=b"{}", port=port) in FEDERATION


def test_one_users_syncs_stay_on_one_worker_and_users_are_spread(client):
    path = "/_matrix/client/v3/sync?since=s1&timeout=0"
    for user in ("alice", "bob", "carol"):
        assert len({port_of(client, path, user=user) for _ in range(5)}) == 1, user
    assert {port_of(client, path, user=f"user{i}") for i in range(30)} == SYNC


def test_one_rooms_pagination_stays_on_one_worker_and_rooms_are_spread(client):
    def room(i):
        return f"/_matrix/client/v3/rooms/%21room{i}%3Aexample.test/messages?dir=b"

    assert len({port_of(client, room(1)) for _ in range(5)}) == 1
    assert {port_of(client, room(i)) for i in range(30)} == CLIENT


def test_a_stopped_sync_worker_leaves_the_others_serving_its_users(client, host):
    path = "/_matrix/client/v3/sync?since=s1&timeout=0"
    users = [f"user{i}" for i in range(20)]
    with stopped(host, 8101):
        assert {port_of(client, path, user=u) for u in users} == {8102}


def test_a_pool_that_does_not_answer_falls_back_to_the_main_process(client, host):
    with stopped(host, 8101, 8102, 8103):
        assert port_of(client, "/_matrix/client/v3/sync?since=s1&timeout=0") in MAIN
        assert port_of(client, "/_matrix/client/v3/sync") in MAIN
    with stopped(host, 8104, 8105):
        # A request with a body is passed on whole to the main process.
        response = client.request(
            HOMESERVER_FQDN, "/_matrix/client/v3/createRoom", method="POST", body=b'{"name": "x"}',
            headers={"Authorization": "Bearer syt_alice_Zm9vYmFy_1a2b3c"})
        assert response.status == 200 and response.json()["port"] in MAIN
        assert response.json()["body_length"] == len(b'{"name": "x"}')
