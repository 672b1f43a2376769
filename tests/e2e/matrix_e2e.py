"""End-to-end client checks for a deployed Matrix stack.

Everything here runs on the controller, outside the server hosts, the way a
user's client would: HTTPS through the nginx proxy (certificate verified
against the staging CA, never unverified), Matrix logins and end-to-end
encryption with matrix-nio, and a real TURN allocation against coturn.

The public host names are not resolvable from the controller, so HTTP
connections go through a static resolver that maps each public name to the
proxy address while the names are still used for SNI, certificate checks and
the Host header.

Configuration comes from environment variables (see ``E2EConfig.from_env``);
``test_matrix_e2e.py`` is the pytest entry point used by Molecule verify.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import socket
import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinResponse,
    KeysUploadError,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomLeaveResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
)

ENV_PREFIX = "MATRIX_E2E_"
# Variable suffix -> attribute of E2EConfig; all of them are required.
ENV_VARIABLES = {
    "PROXY_ADDRESS": "proxy_address",
    "SERVER_NAME": "server_name",
    "HOMESERVER_FQDN": "homeserver_fqdn",
    "ELEMENT_FQDN": "element_fqdn",
    "TURN_ADDRESS": "turn_address",
    "TURN_FQDN": "turn_fqdn",
    "CA_FILE": "ca_file",
    "USER_A": "user_a",
    "PASSWORD_A": "password_a",
    "USER_B": "user_b",
    "PASSWORD_B": "password_b",
}

HTTPS_PORT = 443
TURN_DEFAULT_PORT = 3478
MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"
DEVICE_NAME = "matrix-e2e-check"


class ConfigError(Exception):
    """The environment does not describe a deployment to check."""


class CheckError(Exception):
    """A check could not be carried out (the message says why)."""


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class E2EConfig:
    """Where the deployment is and who may log in (see ENV_VARIABLES)."""

    proxy_address: str
    server_name: str
    homeserver_fqdn: str
    element_fqdn: str
    turn_address: str
    turn_fqdn: str
    ca_file: str
    user_a: str
    password_a: str = field(repr=False)
    user_b: str
    password_b: str = field(repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> E2EConfig:
        """Read the MATRIX_E2E_* variables; raise ConfigError if any is missing."""
        env = os.environ if environ is None else environ
        if not env.get(ENV_PREFIX + "PROXY_ADDRESS"):
            raise ConfigError(
                f"{ENV_PREFIX}PROXY_ADDRESS is not set: these end-to-end checks "
                "must be run by Molecule verify, which exports the MATRIX_E2E_* "
                "variables of the deployed stack (required: "
                + ", ".join(ENV_PREFIX + name for name in ENV_VARIABLES)
                + ")"
            )
        missing = [ENV_PREFIX + n for n in ENV_VARIABLES if not env.get(ENV_PREFIX + n)]
        if missing:
            raise ConfigError("missing environment variables: " + ", ".join(missing))
        values = {attr: env[ENV_PREFIX + name] for name, attr in ENV_VARIABLES.items()}
        for attr in ("proxy_address", "turn_address"):
            try:
                ipaddress.ip_address(values[attr])
            except ValueError as exc:
                raise ConfigError(
                    f"{ENV_PREFIX}{attr.upper()} must be an IP address, "
                    f"got {values[attr]!r}"
                ) from exc
        if not Path(values["ca_file"]).is_file():
            raise ConfigError(
                f"{ENV_PREFIX}CA_FILE={values['ca_file']} is not a readable file"
            )
        return cls(**values)

    @property
    def homeserver_url(self) -> str:
        return f"https://{self.homeserver_fqdn}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    @property
    def proxy_names(self) -> tuple[str, ...]:
        """Public names served by the nginx proxy."""
        return (self.server_name, self.homeserver_fqdn, self.element_fqdn)

    @property
    def address_map(self) -> dict[str, str]:
        """Every public name and the address the controller must use for it."""
        names = dict.fromkeys(self.proxy_names, self.proxy_address)
        names[self.turn_fqdn] = self.turn_address
        return names


# --------------------------------------------------------------------------
# HTTPS through the proxy
# --------------------------------------------------------------------------


class StaticResolver(AbstractResolver):
    """aiohttp resolver that answers from a fixed name -> address map.

    Names outside the map are refused, so nothing silently leaves for the real
    DNS (which does not know the staging names anyway).
    """

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = {name.lower(): addr for name, addr in mapping.items()}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            address = self._mapping[host.lower()]
        except KeyError:
            raise OSError(
                f"{host} is not one of the deployment's public names"
            ) from None
        ip = ipaddress.ip_address(address)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def make_ssl_context(ca_file: str) -> ssl.SSLContext:
    """Client context trusting only the staging CA, with hostname checks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    # create_default_context() also loads nothing else when cafile is given;
    # keep the defaults (CERT_REQUIRED, check_hostname) explicit for readers.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def make_http_session(config: E2EConfig, timeout: float = 30) -> aiohttp.ClientSession:
    """aiohttp session that reaches the public names through the proxy address.

    Must be called from within a running event loop.
    """
    connector = aiohttp.TCPConnector(
        ssl=make_ssl_context(config.ca_file),
        resolver=StaticResolver(config.address_map),
        use_dns_cache=False,
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    )


@dataclass
class HttpResult:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """Body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def text(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


async def http_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    json_body: Any = None,
) -> HttpResult:
    """One HTTP request; redirects are not followed so they can be asserted."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with session.request(
        method,
        url,
        headers=all_headers,
        data=data,
        json=json_body,
        allow_redirects=False,
    ) as response:
        body = await response.read()
        return HttpResult(response.status, response.headers, body)


# --------------------------------------------------------------------------
# Matrix clients (matrix-nio)
# --------------------------------------------------------------------------


def new_client(
    config: E2EConfig, session: aiohttp.ClientSession, localpart: str, store_path: str
) -> AsyncClient:
    """nio client using our session (proxy resolver + staging CA) and an E2EE store."""
    Path(store_path).mkdir(parents=True, exist_ok=True)
    client = AsyncClient(
        config.homeserver_url,
        user=config.user_id(localpart),
        store_path=store_path,
        config=AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,
            # Fail fast on rate limits instead of sleeping for minutes: the
            # test reports the limit instead.
            max_limit_exceeded=0,
            max_timeouts=2,
            request_timeout=30,
        ),
        ssl=make_ssl_context(config.ca_file),
    )
    client.client_session = session
    return client


async def rate_limited_call(call, *args, max_wait: float = 10, **kwargs):
    """Await ``call``; wait out and retry short Synapse rate limits (429).

    Long limits (rc_login, rc_invites: minutes) are returned as errors so the
    test can say so instead of hanging.
    """
    for _ in range(4):
        response = await call(*args, **kwargs)
        retry_ms = getattr(response, "retry_after_ms", None)
        if getattr(response, "status_code", None) != "M_LIMIT_EXCEEDED":
            return response
        if not retry_ms or retry_ms > max_wait * 1000:
            return response
        await asyncio.sleep(retry_ms / 1000)
    return response


def _describe(response: Any) -> str:
    text = str(response)
    if getattr(response, "status_code", None) == "M_LIMIT_EXCEEDED":
        wait = (getattr(response, "retry_after_ms", None) or 0) / 1000
        text += f" (Synapse rate limit; retry after {wait:.0f} s)"
    return text


async def login(client: AsyncClient, password: str) -> LoginResponse:
    """Password login, then upload the device keys (needed for E2EE)."""
    response = await rate_limited_call(
        client.login, password=password, device_name=DEVICE_NAME, max_wait=30
    )
    if not isinstance(response, LoginResponse):
        raise CheckError(f"login of {client.user} failed: {_describe(response)}")
    if client.should_upload_keys:
        keys = await client.keys_upload()
        if isinstance(keys, KeysUploadError):
            raise CheckError(f"device key upload for {client.user} failed: {keys}")
    return response


async def whoami(session: aiohttp.ClientSession, config: E2EConfig, token: str) -> str:
    result = await http_request(
        session,
        "GET",
        f"{config.homeserver_url}/_matrix/client/v3/account/whoami",
        token=token,
    )
    body = result.json() or {}
    if result.status != 200 or "user_id" not in body:
        raise CheckError(f"whoami answered {result.status}: {result.text()}")
    return body["user_id"]


async def _sync_until(
    client: AsyncClient, predicate, what: str, deadline: float
) -> None:
    loop = asyncio.get_running_loop()
    while not predicate():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CheckError(f"{client.user}: timed out waiting for {what}")
        response = await client.sync(timeout=int(min(remaining, 5) * 1000))
        if not isinstance(response, SyncResponse):
            raise CheckError(f"{client.user}: sync failed: {response}")


@dataclass
class EncryptedExchange:
    """What happened to one end-to-end encrypted message from A to B."""

    room_id: str
    event_id: str
    verified_device: str
    wire_type: str
    wire_algorithm: str
    plaintext_on_wire: bool
    received_class: str
    decrypted: bool
    body: str | None


async def exchange_encrypted_message(
    sender: AsyncClient,
    recipient: AsyncClient,
    session: aiohttp.ClientSession,
    text: str,
    timeout: float = 90,
    key_wait: float = 15,
    keep_room: bool = False,
) -> EncryptedExchange:
    """A creates an encrypted room, invites B, B joins, A sends ``text``.

    Both leave and forget the room afterwards, unless ``keep_room`` (a drill
    reads the message again later: ``read_encrypted_event``).

    Trust: A verifies B's current device only after checking that the ed25519
    key the homeserver published for it is the key B's own client holds (an
    out-of-band fingerprint comparison, as two people would do). Any other
    device of B or A (left over from an interrupted run) is blacklisted, so
    the message is sent with ``ignore_unverified_devices=False``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    created = await rate_limited_call(
        sender.room_create,
        name=f"e2e check {secrets.token_hex(4)}",
        preset=RoomPreset.private_chat,
        invite=[recipient.user_id],
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": MEGOLM_ALGORITHM},
            }
        ],
    )
    if not isinstance(created, RoomCreateResponse):
        raise CheckError(f"room creation failed: {_describe(created)}")
    room_id = created.room_id
    try:
        await _sync_until(
            sender,
            lambda: room_id in sender.rooms and sender.rooms[room_id].encrypted,
            "the new room to be encrypted",
            deadline,
        )
        await _sync_until(
            recipient,
            lambda: room_id in recipient.invited_rooms,
            "the invite",
            deadline,
        )
        joined = await rate_limited_call(recipient.join, room_id)
        if not isinstance(joined, JoinResponse):
            raise CheckError(f"{recipient.user} could not join: {_describe(joined)}")
        await _sync_until(
            recipient, lambda: room_id in recipient.rooms, "its own join", deadline
        )
        await _sync_until(
            sender,
            lambda: recipient.user_id in sender.rooms[room_id].users,
            f"{recipient.user_id} to be a member",
            deadline,
        )

        # Key query, then out-of-band fingerprint check and trust decisions.
        if sender.should_query_keys:
            await sender.keys_query()
        own_key = recipient.olm.account.identity_keys["ed25519"]
        verified = None
        for user_id in (recipient.user_id, sender.user_id):
            for device in list(sender.device_store.active_user_devices(user_id)):
                if user_id == recipient.user_id and device.id == recipient.device_id:
                    if device.ed25519 != own_key:
                        raise CheckError(
                            f"the homeserver published ed25519 key {device.ed25519} "
                            f"for {user_id}/{device.id}, but that device holds {own_key}"
                        )
                    sender.verify_device(device)
                    verified = device.id
                elif not (user_id == sender.user_id and device.id == sender.device_id):
                    sender.blacklist_device(device)
        if verified is None:
            raise CheckError(
                f"{sender.user_id} did not get the device keys of "
                f"{recipient.user_id}/{recipient.device_id} from the homeserver"
            )

        sent = await rate_limited_call(
            sender.room_send,
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": text},
            ignore_unverified_devices=False,
        )
        if not isinstance(sent, RoomSendResponse):
            raise CheckError(f"sending the encrypted message failed: {_describe(sent)}")
        event_id = sent.event_id

        # What the homeserver stored and serves: must be ciphertext only.
        raw = await http_request(
            session,
            "GET",
            f"{recipient.homeserver}/_matrix/client/v3/rooms/{quote(room_id)}"
            f"/event/{quote(event_id)}",
            token=recipient.access_token,
        )
        wire = raw.json() or {}
        if raw.status != 200:
            raise CheckError(
                f"fetching the raw event answered {raw.status}: {raw.text()}"
            )

        # B syncs until the event arrives and is decrypted. The room key comes
        # as an Olm-encrypted to-device message, possibly in a later sync.
        received = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            response = await recipient.sync(timeout=int(min(remaining, 5) * 1000))
            if not isinstance(response, SyncResponse):
                raise CheckError(f"{recipient.user}: sync failed: {response}")
            room = response.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if getattr(event, "event_id", None) == event_id:
                    received = event
                    # Give the room key a bounded time once the event is here.
                    deadline = min(deadline, loop.time() + key_wait)
            if isinstance(received, MegolmEvent):
                try:
                    received = recipient.decrypt_event(received)
                except EncryptionError:
                    pass
            if received is not None and not isinstance(received, MegolmEvent):
                break
        if received is None:
            raise CheckError(f"{recipient.user} never received event {event_id}")
        return EncryptedExchange(
            room_id=room_id,
            event_id=event_id,
            verified_device=verified,
            wire_type=wire.get("type", ""),
            wire_algorithm=(wire.get("content") or {}).get("algorithm", ""),
            plaintext_on_wire=text in raw.body.decode("utf-8", "replace"),
            received_class=type(received).__name__,
            decrypted=bool(getattr(received, "decrypted", False)),
            body=(
                getattr(received, "body", None)
                if isinstance(received, RoomMessageText)
                else None
            ),
        )
    finally:
        # Keep the test accounts tidy across runs.
        if not keep_room:
            for client in (recipient, sender):
                await _leave_and_forget(client, room_id)


async def read_encrypted_event(client: AsyncClient, room_id: str, event_id: str) -> str:
    """The text of an encrypted event fetched again from the homeserver
    (GET /rooms/{room}/event/{event}) and decrypted with the keys in the
    client's own store; CheckError if it is gone or does not decrypt."""
    response = await rate_limited_call(client.room_get_event, room_id, event_id)
    event = getattr(response, "event", None)
    if event is None:
        raise CheckError(f"{client.user}: event {event_id} not served: {_describe(response)}")
    if isinstance(event, MegolmEvent):
        try:
            event = client.decrypt_event(event)
        except EncryptionError as exc:
            raise CheckError(f"{client.user}: event {event_id} does not decrypt: {exc}") from exc
    if not isinstance(event, RoomMessageText):
        raise CheckError(f"{client.user}: event {event_id} is a {type(event).__name__}, not a text message")
    return event.body


async def _leave_and_forget(client: AsyncClient, room_id: str) -> None:
    """Best-effort clean-up (waits out a short rc_message limit)."""
    try:
        left = await rate_limited_call(client.room_leave, room_id)
        if isinstance(left, RoomLeaveResponse):
            await client.room_forget(room_id)
    except Exception:  # noqa: BLE001 - clean-up must not hide the result
        pass


# --------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------


async def upload_media(
    session: aiohttp.ClientSession,
    config: E2EConfig,
    token: str,
    data: bytes,
    filename: str,
) -> str:
    """Upload through the proxy (POST /_matrix/media/v3/upload); return the mxc URI."""
    result = await http_request(
        session,
        "POST",
        f"{config.homeserver_url}/_matrix/media/v3/upload?filename={quote(filename)}",
        token=token,
        headers={"Content-Type": "application/octet-stream"},
        data=data,
    )
    body = result.json() or {}
    if result.status != 200 or not str(body.get("content_uri", "")).startswith(
        "mxc://"
    ):
        raise CheckError(f"upload answered {result.status}: {result.text()}")
    return body["content_uri"]


async def create_room(
    session: aiohttp.ClientSession, config: E2EConfig, token: str, name: str
) -> str:
    """A private room (POST /createRoom): its ID."""
    result = await http_request(
        session,
        "POST",
        f"{config.homeserver_url}/_matrix/client/v3/createRoom",
        token=token,
        json_body={"name": name, "preset": "private_chat"},
    )
    if result.status != 200:
        raise CheckError(f"createRoom answered {result.status}: {result.text()}")
    return result.json()["room_id"]


async def send_text(
    session: aiohttp.ClientSession, config: E2EConfig, token: str, room_id: str, text: str
) -> HttpResult:
    """A plain text message in the room (PUT .../send/m.room.message/<new txn>)."""
    return await http_request(
        session,
        "PUT",
        f"{config.homeserver_url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
        f"{secrets.token_hex(8)}",
        token=token,
        json_body={"msgtype": "m.text", "body": text},
    )


async def get_event(
    session: aiohttp.ClientSession, config: E2EConfig, token: str, room_id: str, event_id: str
) -> HttpResult:
    """One event of the room as the server serves it now (GET .../event/<id>)."""
    return await http_request(
        session,
        "GET",
        f"{config.homeserver_url}/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
        token=token,
    )


def authenticated_media_url(config: E2EConfig, mxc: str) -> str:
    """URL of the authenticated media download endpoint for an mxc:// URI."""
    parsed = urlparse(mxc)
    if parsed.scheme != "mxc" or not parsed.netloc or not parsed.path.strip("/"):
        raise CheckError(f"not an mxc URI: {mxc}")
    return (
        f"{config.homeserver_url}/_matrix/client/v1/media/download/"
        f"{quote(parsed.netloc, safe='')}/{quote(parsed.path.strip('/'), safe='')}"
    )


async def download_media(
    session: aiohttp.ClientSession, config: E2EConfig, token: str | None, mxc: str
) -> HttpResult:
    """GET /_matrix/client/v1/media/download/... (with the token if given)."""
    return await http_request(
        session, "GET", authenticated_media_url(config, mxc), token=token
    )


# --------------------------------------------------------------------------
# TURN
# --------------------------------------------------------------------------


async def get_turn_server(
    session: aiohttp.ClientSession, config: E2EConfig, token: str
) -> dict[str, Any]:
    """GET /_matrix/client/v3/voip/turnServer (username, password, uris, ttl)."""
    result = await http_request(
        session,
        "GET",
        f"{config.homeserver_url}/_matrix/client/v3/voip/turnServer",
        token=token,
    )
    body = result.json()
    if result.status != 200 or not isinstance(body, dict):
        raise CheckError(f"turnServer answered {result.status}: {result.text()}")
    return body


@dataclass(frozen=True)
class TurnUri:
    scheme: str  # turn or turns
    host: str
    port: int
    transport: str  # udp or tcp


def parse_turn_uri(uri: str) -> TurnUri:
    """Parse turn:host[:port][?transport=udp|tcp] (RFC 7065)."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in ("turn", "turns"):
        raise CheckError(f"not a TURN URI: {uri}")
    hostport, _, query = rest.partition("?")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    transports = parse_qs(query).get("transport", [])
    transport = transports[0] if transports else ("tcp" if scheme == "turns" else "udp")
    default_port = 5349 if scheme == "turns" else TURN_DEFAULT_PORT
    return TurnUri(
        scheme, host or hostport, int(port) if port else default_port, transport
    )


@dataclass
class TurnAllocation:
    relayed_address: tuple[str, int]
    mapped_address: tuple[str, int]
    realm: str | None


class TurnProbe:
    """A UDP TURN client (aioice) with long-term credentials.

    Allocate: first request is answered 401 with REALM and NONCE, the client
    retries with MESSAGE-INTEGRITY; responses to authenticated requests are
    only accepted when their MESSAGE-INTEGRITY matches the same key, so a
    success also proves the server shares the secret.
    """

    def __init__(self, server: tuple[str, int], username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.protocol: TurnClientUdpProtocol | None = None
        self.transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> TurnProbe:
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(
                self.server,
                username=self.username,
                password=self.password,
                lifetime=60,
                channel_refresh_time=60,
            ),
            remote_addr=self.server,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.protocol is not None and self.transport is not None
        if self.protocol.relayed_address is not None:
            try:
                await asyncio.wait_for(self.protocol.delete(), 5)
            except (asyncio.TimeoutError, stun.TransactionError):
                pass
        self.transport.close()

    async def allocate(self, timeout: float = 15) -> TurnAllocation:
        """Allocate a UDP relay; raises stun.TransactionFailed on an error answer."""
        assert self.protocol is not None
        try:
            relayed = await asyncio.wait_for(self.protocol.connect(), timeout)
        except asyncio.TimeoutError:
            raise CheckError(
                f"no TURN answer from {self.server[0]}:{self.server[1]}/udp "
                f"within {timeout} s"
            ) from None
        return TurnAllocation(
            relayed_address=relayed,
            mapped_address=self.protocol.mapped_address,
            realm=self.protocol.realm,
        )

    async def create_permission(self, peer_ip: str, timeout: float = 15) -> int:
        """CreatePermission for ``peer_ip``; returns 0 on success or the error code."""
        assert self.protocol is not None
        request = stun.Message(
            message_method=stun.Method.CREATE_PERMISSION,
            message_class=stun.Class.REQUEST,
        )
        request.attributes["XOR-PEER-ADDRESS"] = (peer_ip, 0)
        try:
            await asyncio.wait_for(self.protocol.request_with_retry(request), timeout)
        except stun.TransactionFailed as exc:
            return exc.response.error_code or -1
        except (asyncio.TimeoutError, stun.TransactionTimeout):
            raise CheckError(
                f"no (authenticated) answer to CreatePermission for {peer_ip}"
            ) from None
        return 0

    async def allocate_error(self, timeout: float = 15) -> int:
        """Try to allocate; return the error code (0 if the allocation succeeded)."""
        try:
            await self.allocate(timeout)
        except stun.TransactionFailed as exc:
            return exc.response.error_code or -1
        return 0


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


@dataclass
class TlsResult:
    version: str
    cipher: str
    subject_alt_names: tuple[str, ...]


def tls_handshake(
    address: str, port: int, server_name: str, ca_file: str, timeout: float = 10
) -> TlsResult:
    """Full TLS handshake with SNI ``server_name``, verified against ``ca_file``."""
    context = make_ssl_context(ca_file)
    with socket.create_connection((address, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert() or {}
            names = tuple(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
            return TlsResult(tls.version() or "", (tls.cipher() or ("",))[0], names)


def tls_protocol_accepted(
    address: str,
    port: int,
    server_name: str,
    ca_file: str,
    version: ssl.TLSVersion,
    timeout: float = 10,
) -> tuple[bool, str]:
    """Offer only ``version``; return (handshake succeeded, detail).

    The client context is opened up (SECLEVEL=0) so that it can offer old
    protocol versions at all; if the local OpenSSL still cannot, CheckError is
    raised rather than a misleading "refused".
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                return True, f"negotiated {tls.version()}"
    except ssl.SSLError as exc:
        if "NO_PROTOCOLS_AVAILABLE" in str(exc) or "NO_CIPHERS_AVAILABLE" in str(exc):
            raise CheckError(
                f"this controller's OpenSSL cannot offer {version.name}: {exc}"
            ) from exc
        return False, str(exc)
    except (ConnectionResetError, ConnectionAbortedError) as exc:
        return False, f"connection closed during handshake: {exc}"


def random_text(prefix: str = "e2e-check") -> str:
    return f"{prefix} {secrets.token_urlsafe(24)}"
