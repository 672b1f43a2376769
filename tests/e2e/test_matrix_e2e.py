"""End-to-end checks of a deployed Matrix stack, run from the controller.

What a user and an auditor would check from outside the servers: two users
log in, exchange an end-to-end encrypted message, share a file, get TURN
credentials that really allocate a relay (and a forbidden peer is refused),
the discovery and web client files are served with their security headers,
the Synapse admin API is not reachable through the proxy, and TLS verifies
against the staging CA with old protocol versions refused.

Configuration: the MATRIX_E2E_* environment variables (see matrix_e2e.py).
Without them every test fails: they are meant to run in Molecule verify.

Run: pytest -v tests/e2e/test_matrix_e2e.py
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from aioice import stun

import matrix_e2e as e2e

T = TypeVar("T")
Runner = Callable[..., Any]


@pytest.fixture(scope="session")
def config() -> e2e.E2EConfig:
    try:
        return e2e.E2EConfig.from_env()
    except e2e.ConfigError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def run() -> Iterator[Runner]:
    """Run a coroutine on one event loop shared by the whole session.

    The logged-in nio clients and aiohttp sessions are bound to this loop.
    """
    loop = asyncio.new_event_loop()

    def _run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    yield _run
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="session")
def http(config: e2e.E2EConfig, run: Runner) -> Iterator[aiohttp.ClientSession]:
    async def _open() -> aiohttp.ClientSession:
        return e2e.make_http_session(config)

    session = run(_open())
    yield session
    run(session.close())


@dataclass
class Users:
    """Users A and B, logged in once per session (Synapse limits logins)."""

    clients: dict[str, Any] = field(default_factory=dict)
    logins: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def require(self) -> tuple[Any, Any]:
        if self.errors:
            pytest.fail(
                "login failed, so this check cannot run: "
                + "; ".join(self.errors.values()),
                pytrace=False,
            )
        return self.clients["a"], self.clients["b"]


@pytest.fixture(scope="session")
def users(
    config: e2e.E2EConfig,
    run: Runner,
    http: aiohttp.ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Users]:
    result = Users()
    accounts = {
        "a": (config.user_a, config.password_a),
        "b": (config.user_b, config.password_b),
    }
    for key, (localpart, password) in accounts.items():

        async def _session() -> aiohttp.ClientSession:
            return e2e.make_http_session(config)

        client = e2e.new_client(
            config,
            run(_session()),
            localpart,
            str(tmp_path_factory.mktemp(f"nio-store-{key}")),
        )
        result.clients[key] = client
        try:
            result.logins[key] = run(e2e.login(client, password), timeout=90)
        except (
            e2e.CheckError,
            aiohttp.ClientError,
            OSError,
            asyncio.TimeoutError,
        ) as exc:
            result.errors[key] = (
                f"{config.user_id(localpart)}: {type(exc).__name__}: {exc}"
            )
    yield result
    for key, client in result.clients.items():
        if key in result.logins:
            # Logging out deletes the device and its keys on the server.
            try:
                run(client.logout(), timeout=30)
            except Exception:  # noqa: BLE001 - teardown must close everything
                pass
        run(client.close(), timeout=30)


# --------------------------------------------------------------------------
# 1. Login
# --------------------------------------------------------------------------


def test_users_log_in(config: e2e.E2EConfig, users: Users, run: Runner, http) -> None:
    assert not users.errors, "login through the proxy failed: " + "; ".join(
        users.errors.values()
    )
    for key, localpart in (("a", config.user_a), ("b", config.user_b)):
        login = users.logins[key]
        expected = config.user_id(localpart)
        assert (
            login.user_id == expected
        ), f"login returned {login.user_id}, expected {expected}"
        assert (
            login.access_token and login.device_id
        ), f"{expected}: no token or device id"
        seen = run(e2e.whoami(http, config, login.access_token))
        assert seen == expected, f"whoami with the token of {expected} returned {seen}"


# --------------------------------------------------------------------------
# 2. End-to-end encryption
# --------------------------------------------------------------------------


def test_e2ee_message_roundtrip(users: Users, run: Runner, http) -> None:
    alice, bob = users.require()
    text = e2e.random_text()
    result = run(e2e.exchange_encrypted_message(alice, bob, http, text), timeout=120)

    assert result.wire_type == "m.room.encrypted", (
        f"the homeserver stored event {result.event_id} as {result.wire_type!r}, "
        "not as an encrypted event"
    )
    assert (
        result.wire_algorithm == e2e.MEGOLM_ALGORITHM
    ), f"event encrypted with {result.wire_algorithm!r}, expected {e2e.MEGOLM_ALGORITHM}"
    assert (
        not result.plaintext_on_wire
    ), "the message text is readable on the homeserver"
    decrypted = result.received_class == "RoomMessageText" and result.decrypted
    assert decrypted, (
        f"{bob.user_id} could not decrypt the message: got {result.received_class} "
        "(no usable room key arrived by to-device message)"
    )
    assert (
        result.body == text
    ), f"decrypted body {result.body!r} differs from sent {text!r}"


# --------------------------------------------------------------------------
# 3. Media
# --------------------------------------------------------------------------


def test_media_upload_and_authenticated_download(
    config: e2e.E2EConfig, users: Users, run: Runner, http
) -> None:
    alice, bob = users.require()
    data = os.urandom(256 * 1024)
    mxc = run(e2e.upload_media(http, config, alice.access_token, data, "e2e-check.bin"))

    downloaded = run(e2e.download_media(http, config, bob.access_token, mxc))
    assert downloaded.status == 200, (
        f"{bob.user_id} downloading {mxc} via /_matrix/client/v1/media/download "
        f"answered {downloaded.status}: {downloaded.text()}"
    )
    assert len(downloaded.body) == len(
        data
    ), f"downloaded {len(downloaded.body)} bytes, uploaded {len(data)}"
    assert downloaded.body == data, "downloaded bytes differ from the uploaded bytes"

    anonymous = run(e2e.download_media(http, config, None, mxc))
    assert (
        anonymous.status == 401
    ), f"authenticated media served {mxc} without a token (status {anonymous.status})"


# --------------------------------------------------------------------------
# 4. TURN
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def turn_server(
    config: e2e.E2EConfig, users: Users, run: Runner, http
) -> dict[str, Any]:
    _, bob = users.require()
    return run(e2e.get_turn_server(http, config, bob.access_token))


def _udp_turn_uri(config: e2e.E2EConfig, turn: dict[str, Any]) -> e2e.TurnUri:
    uris = [e2e.parse_turn_uri(u) for u in turn.get("uris", [])]
    for uri in uris:
        if (
            uri.scheme == "turn"
            and uri.transport == "udp"
            and uri.host == config.turn_fqdn
        ):
            return uri
    pytest.fail(
        f"no turn:{config.turn_fqdn}...?transport=udp URI in {turn.get('uris')}"
    )


def test_turn_credentials_from_homeserver(config: e2e.E2EConfig, turn_server) -> None:
    for key in ("username", "password", "uris", "ttl"):
        assert turn_server.get(
            key
        ), f"turnServer response lacks {key}: {sorted(turn_server)}"
    assert any(
        config.turn_fqdn in uri for uri in turn_server["uris"]
    ), f"turnServer URIs {turn_server['uris']} do not name {config.turn_fqdn}"
    assert int(turn_server["ttl"]) > 0, f"ttl is {turn_server['ttl']}"


def test_turn_allocation_with_homeserver_credentials(
    config: e2e.E2EConfig, turn_server, run: Runner
) -> None:
    uri = _udp_turn_uri(config, turn_server)
    server = (config.turn_address, uri.port)

    async def _allocate() -> tuple[e2e.TurnAllocation, int]:
        async with e2e.TurnProbe(
            server, turn_server["username"], turn_server["password"]
        ) as probe:
            allocation = await probe.allocate()
            # A loopback peer is never a legitimate relay target.
            denied = await probe.create_permission("127.0.0.1")
            return allocation, denied

    try:
        allocation, denied = run(_allocate())
    except stun.TransactionFailed as exc:
        pytest.fail(
            f"coturn at {server[0]}:{server[1]}/udp refused the homeserver's "
            f"credentials: {exc}",
            pytrace=False,
        )
    host, port = allocation.relayed_address
    ipaddress.ip_address(host)
    assert port > 0, f"relayed address {allocation.relayed_address} has no port"
    assert allocation.realm, "coturn did not announce a realm"
    assert denied == 403, (
        f"CreatePermission for peer 127.0.0.1 answered "
        f"{'success' if denied == 0 else denied}, expected 403 Forbidden"
    )


def test_turn_allocation_with_wrong_password_refused(
    config: e2e.E2EConfig, turn_server, run: Runner
) -> None:
    uri = _udp_turn_uri(config, turn_server)

    async def _allocate() -> int:
        async with e2e.TurnProbe(
            (config.turn_address, uri.port),
            turn_server["username"],
            "not-" + turn_server["password"],
        ) as probe:
            return await probe.allocate_error()

    code = run(_allocate())
    assert code == 401, (
        f"Allocate with a wrong password answered "
        f"{'success' if code == 0 else code}, expected 401 Unauthorized"
    )


def test_turns_endpoint_certificate(config: e2e.E2EConfig, turn_server) -> None:
    tls_uris = [
        u
        for u in map(e2e.parse_turn_uri, turn_server.get("uris", []))
        if u.scheme == "turns"
    ]
    if not tls_uris:
        pytest.skip("the homeserver advertises no turns: URI")
    for uri in tls_uris:
        result = e2e.tls_handshake(
            config.turn_address, uri.port, uri.host, config.ca_file
        )
        assert result.version in (
            "TLSv1.2",
            "TLSv1.3",
        ), f"turns:{uri.host}:{uri.port} negotiated {result.version}"


# --------------------------------------------------------------------------
# 5-7. Discovery, web client, admin API
# --------------------------------------------------------------------------


def test_well_known_client(config: e2e.E2EConfig, run: Runner, http) -> None:
    url = f"https://{config.server_name}/.well-known/matrix/client"
    result = run(e2e.http_request(http, "GET", url))
    assert result.status == 200, f"{url} answered {result.status}: {result.text()}"
    body = result.json()
    assert isinstance(body, dict), f"{url} is not JSON: {result.text()}"
    base_url = (body.get("m.homeserver") or {}).get("base_url", "")
    assert (
        base_url.rstrip("/") == config.homeserver_url
    ), f"m.homeserver.base_url is {base_url!r}, expected {config.homeserver_url}"
    cors = result.headers.get("Access-Control-Allow-Origin")
    assert (
        cors
    ), f"{url} has no Access-Control-Allow-Origin header (web clients need CORS)"


def test_element_web(config: e2e.E2EConfig, run: Runner, http) -> None:
    url = f"https://{config.element_fqdn}/"
    index = run(e2e.http_request(http, "GET", url))
    assert index.status == 200, f"{url} answered {index.status}"
    assert index.content_type == "text/html", f"{url} served {index.content_type}"
    assert b"<html" in index.body.lower(), f"{url} is not an HTML page: {index.text()}"
    missing = [
        h
        for h in (
            "Content-Security-Policy",
            "Strict-Transport-Security",
            "X-Content-Type-Options",
            "Referrer-Policy",
        )
        if not index.headers.get(h)
    ]
    assert not missing, f"{url} lacks security headers {missing}"
    assert (
        index.headers["X-Content-Type-Options"].lower() == "nosniff"
    ), f"X-Content-Type-Options is {index.headers['X-Content-Type-Options']!r}"

    config_url = f"https://{config.element_fqdn}/config.json"
    result = run(e2e.http_request(http, "GET", config_url))
    assert result.status == 200, f"{config_url} answered {result.status}"
    element_config = result.json()
    assert isinstance(
        element_config, dict
    ), f"{config_url} is not JSON: {result.text()}"
    server = element_config.get("default_server_config", {}).get("m.homeserver", {})
    assert str(server.get("base_url", "")).rstrip("/") == config.homeserver_url, (
        f"Element's default homeserver is {server.get('base_url')!r}, "
        f"expected {config.homeserver_url}"
    )
    assert server.get("server_name") == config.server_name, (
        f"Element's server_name is {server.get('server_name')!r}, "
        f"expected {config.server_name}"
    )


@pytest.mark.parametrize(
    "path", ["/_synapse/admin/v1/server_version", "/_synapse/admin/v2/users"]
)
def test_admin_api_not_exposed(
    config: e2e.E2EConfig, run: Runner, http, path: str
) -> None:
    url = config.homeserver_url + path
    result = run(e2e.http_request(http, "GET", url))
    body = result.json()
    assert not isinstance(body, dict), (
        f"{url} was answered by Synapse through the proxy "
        f"(status {result.status}): {result.text()}"
    )
    assert (
        result.status == 404
    ), f"{url} answered {result.status}, expected 404 from nginx"


# --------------------------------------------------------------------------
# 8. TLS
# --------------------------------------------------------------------------


def test_tls_certificates_verify(config: e2e.E2EConfig) -> None:
    for name in config.proxy_names:
        try:
            result = e2e.tls_handshake(
                config.proxy_address, e2e.HTTPS_PORT, name, config.ca_file
            )
        except ssl.SSLCertVerificationError as exc:
            pytest.fail(
                f"certificate served for {name} does not verify against "
                f"{config.ca_file}: {exc.verify_message}",
                pytrace=False,
            )
        # The handshake checked the chain and that the certificate names it.
        assert result.version in ("TLSv1.2", "TLSv1.3"), f"{name}: {result.version}"


def test_tls_1_1_refused(config: e2e.E2EConfig) -> None:
    accepted, detail = e2e.tls_protocol_accepted(
        config.proxy_address,
        e2e.HTTPS_PORT,
        config.homeserver_fqdn,
        config.ca_file,
        ssl.TLSVersion.TLSv1_1,
    )
    assert not accepted, f"the proxy accepted a TLSv1.1 handshake ({detail})"
