"""What an operator checks after roles/coturn ran (molecule/role-coturn).

Real TURN clients (aioice) on the controller, outside the host, with the
credentials Synapse would hand out (TURN REST API: username "<expiry>:<user>",
password base64(HMAC-SHA1(shared secret, username))): a relay is allocated over
UDP, TCP and TLS; a wrong or expired credential is refused; relays towards
loopback and private ranges are forbidden, except the allowed range; TCP relays
are refused. Then the service, its sockets, its sandbox and its configuration.
"""
import asyncio
import base64
import hashlib
import hmac
import ssl
import time

import pytest
from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

TCP_TRANSPORT = 0x06000000  # REQUESTED-TRANSPORT for a TCP relay (RFC 6062)


# --- helpers -------------------------------------------------------------------

def rest_credentials(secret, user="molecule", lifetime=3600):
    """The time-limited credentials Synapse derives from turn_shared_secret."""
    username = f"{int(time.time()) + lifetime}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class TurnClient:
    """One TURN control connection (UDP, TCP or TLS) with long-term credentials.

    aioice answers the first 401 (realm, nonce) by retrying with MESSAGE-INTEGRITY and
    only accepts responses signed with the same key: a success proves that coturn
    shares the secret, not only that it answered.
    """

    def __init__(self, server, username, password, transport="udp", tls=None, tls_name=None):
        self.server = server
        self.username = username
        self.password = password
        self.transport_name = transport
        self.tls = tls
        self.tls_name = tls_name
        self.transport = None
        self.protocol = None

    def _factory(self, cls):
        return lambda: cls(self.server, username=self.username, password=self.password,
                           lifetime=60, channel_refresh_time=60)

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        if self.transport_name == "udp":
            self.transport, self.protocol = await loop.create_datagram_endpoint(
                self._factory(TurnClientUdpProtocol), remote_addr=self.server)
        else:
            self.transport, self.protocol = await asyncio.wait_for(loop.create_connection(
                self._factory(TurnClientTcpProtocol), host=self.server[0], port=self.server[1],
                ssl=self.tls, server_hostname=self.tls_name if self.tls else None), 10)
        return self

    async def __aexit__(self, *exc_info):
        if self.protocol.relayed_address is not None:
            try:
                await asyncio.wait_for(self.protocol.delete(), 5)
            except (asyncio.TimeoutError, stun.TransactionError):
                pass
        self.transport.close()

    async def request(self, method, attributes):
        """Send one request (authenticated after the first 401); 0 or the error code."""
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes)
        try:
            await asyncio.wait_for(self.protocol.request_with_retry(message), 15)
        except stun.TransactionFailed as exc:
            return exc.response.error_code
        return 0

    async def allocate(self):
        """Allocate a UDP relay: (relayed address, mapped address)."""
        relayed = await asyncio.wait_for(self.protocol.connect(), 15)
        return relayed, self.protocol.mapped_address

    async def allocate_error(self):
        try:
            await self.allocate()
        except stun.TransactionFailed as exc:
            return exc.response.error_code
        return 0

    async def create_permission(self, peer_ip):
        return await self.request(stun.Method.CREATE_PERMISSION,
                                  {"XOR-PEER-ADDRESS": (peer_ip, 0)})


def run(coroutine):
    return asyncio.run(coroutine)


# --- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def settings(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def address(host):
    facts = host.ansible("setup", "gather_subset=network")["ansible_facts"]
    return facts["ansible_default_ipv4"]["address"]


@pytest.fixture(scope="module")
def credentials(settings):
    return rest_credentials(settings["coturn_auth_secret"])


@pytest.fixture(scope="module")
def tls_context(host, settings):
    """Trust exactly the scenario's self-signed certificate."""
    context = ssl.create_default_context(
        cadata=host.file(settings["coturn_tls_certificate"]).content_string)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- a client's point of view ----------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocation_with_rest_credentials_succeeds(address, credentials, transport):
    async def scenario():
        async with TurnClient((address, 3478), *credentials, transport=transport) as client:
            return await client.allocate()

    relayed, mapped = run(scenario())
    assert relayed[0] == address
    assert 49152 <= relayed[1] <= 65535
    assert mapped is not None


def test_allocation_over_tls_succeeds_with_the_certificate(address, credentials, settings, tls_context):
    async def scenario():
        async with TurnClient((address, 5349), *credentials, transport="tcp", tls=tls_context,
                              tls_name=settings["coturn_server_name"]) as client:
            version = client.transport.get_extra_info("ssl_object").version()
            return version, await client.allocate()

    version, (relayed, _) = run(scenario())
    assert version in ("TLSv1.2", "TLSv1.3")
    assert relayed[0] == address


@pytest.mark.parametrize("version, accepted", [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True)])
def test_tls_versions(host, address, version, accepted):
    """TLS 1.0/1.1 are off (no-tlsv1, no-tlsv1_1); coturn 4.6.1 (Debian 12) speaks TLS 1.2.
    openssl on the host, at security level 0, so that only the server can refuse."""
    result = host.run("echo | timeout 10 openssl s_client -connect %s:5349 %s -cipher DEFAULT:@SECLEVEL=0",
                      address, version)
    negotiated = "Cipher is (NONE)" not in result.stdout and result.rc == 0
    assert negotiated == accepted, result.stdout + result.stderr


def test_wrong_password_is_refused(address, credentials):
    username, password = credentials

    async def scenario():
        async with TurnClient((address, 3478), username, password[::-1]) as client:
            return await client.allocate_error()

    assert run(scenario()) == 401


def test_expired_credentials_are_refused(address, settings):
    credentials = rest_credentials(settings["coturn_auth_secret"], lifetime=-60)

    async def scenario():
        async with TurnClient((address, 3478), *credentials) as client:
            return await client.allocate_error()

    assert run(scenario()) == 401


def test_relays_to_denied_peers_are_forbidden(address, credentials):
    """Loopback, the host's own private network and metadata-style link-local addresses
    are refused (403); a public address and the operator's allowed range are accepted."""
    peers = {
        "127.0.0.1": 403,
        address: 403,            # the Docker network is private (172.16.0.0/12 or 192.168/16)
        "169.254.169.254": 403,
        "10.0.0.1": 403,
        "100.64.0.1": 403,
        "10.99.0.5": 0,          # coturn_allowed_peer_ips: 10.99.0.1-10.99.0.10
        "10.99.0.11": 403,       # just outside the allowed range
        "1.1.1.1": 0,
    }

    async def scenario():
        async with TurnClient((address, 3478), *credentials) as client:
            await client.allocate()
            return {peer: await client.create_permission(peer) for peer in peers}

    assert run(scenario()) == peers


def test_tcp_relays_are_refused(address, credentials):
    async def scenario():
        async with TurnClient((address, 3478), *credentials, transport="tcp") as client:
            return await client.request(stun.Method.ALLOCATE,
                                        {"REQUESTED-TRANSPORT": TCP_TRANSPORT, "LIFETIME": 60})

    # 442 Unsupported Transport Protocol (no-tcp-relay).
    assert run(scenario()) == 442


# --- the host --------------------------------------------------------------------

def test_service_is_running_and_enabled(host):
    service = host.service("coturn")
    assert service.is_running
    assert service.is_enabled
    assert host.process.get(comm="turnserver").user == "turnserver"


def test_listening_sockets(host):
    sockets = host.socket.get_listening_sockets()
    for expected in ("udp", "tcp"):
        assert any(s.startswith(f"{expected}://") and s.endswith(":3478") for s in sockets), sockets
    assert any(s.startswith("tcp://") and s.endswith(":5349") for s in sockets), sockets
    # No telnet CLI (5766), no web admin, no RFC 5780 alternate port (3479).
    assert not any(s.endswith((":5766", ":3479", ":8080")) for s in sockets), sockets


def test_turnserver_reads_the_key_through_its_group(host, settings):
    assert "ssl-cert" in host.user("turnserver").groups
    key = host.file(settings["coturn_tls_certificate_key"])
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)


def test_configuration_file(host, settings):
    config = host.file("/etc/turnserver.conf")
    assert (config.user, config.group, config.mode) == ("root", "turnserver", 0o640)
    lines = [line.strip() for line in config.content_string.splitlines()
             if line.strip() and not line.startswith("#")]
    for option in ("use-auth-secret", "no-tcp-relay", "no-multicast-peers", "no-cli",
                   "fingerprint", "no-software-attribute", "no-rfc5780",
                   "no-stun-backward-compatibility", "response-origin-only-with-rfc5780",
                   "syslog", "no-tlsv1", "no-tlsv1_1"):
        assert option in lines, option
    assert f"static-auth-secret={settings['coturn_auth_secret']}" in lines
    assert f"realm={settings['coturn_realm']}" in lines
    assert "allowed-peer-ip=10.99.0.1-10.99.0.10" in lines
    denied = [line.split("=", 1)[1] for line in lines if line.startswith("denied-peer-ip=")]
    # The full list of Synapse's TURN guide (14 IPv4 ranges, 8 IPv6).
    assert len(denied) == 22
    for expected in ("127.0.0.0-127.255.255.255", "::1", "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        assert expected in denied
    for forbidden in ("no-auth", "lt-cred-mech", "allow-loopback-peers", "cli-password"):
        assert not [line for line in lines if line.split("=")[0] == forbidden], forbidden


def test_service_sandbox_is_applied(host):
    show = host.check_output(
        "systemctl show coturn -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
        "-p PrivateDevices -p CapabilityBoundingSet -p MemoryDenyWriteExecute")
    properties = dict(line.split("=", 1) for line in show.splitlines())
    assert properties == {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
    }
    # Really applied: the running process holds no capability and cannot gain one.
    pid = host.check_output("systemctl show coturn -p MainPID --value")
    status = host.file(f"/proc/{pid}/status").content_string
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status


def test_logs_reach_the_journal(host):
    journal = host.check_output("journalctl -u coturn -b --no-pager --output=cat")
    assert "Total General servers" in journal
