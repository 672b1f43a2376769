"""The network policy, as an auditor measures it: THE PORT MATRIX.

From every host and from the controller (the outside: pytest runs there, on
the Docker network), every port of every tier is probed on every host: TCP
connect (open / closed = RST / filtered = silence), STUN Binding on the TURN
UDP port, a datagram to a relay port (ICMP port unreachable = it got through,
silence = dropped). Each result must match the service map
(group_vars/all/services.yml), as recorded by the nftables role on each host
(/etc/ansible/facts.d/nftables.fact); the map's main statements are also
asserted on their own. The matrix is printed (expected/observed per cell).

Then the TURN relays: a CreatePermission towards a server-tier address is
refused (403), towards an allowed address accepted; and coturn's account on
the TURN host reaches no server-tier port, whatever coturn is told.
"""
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import pathlib
import sys
import time

import pytest
from conftest import CREDENTIALS, EPHEMERAL, address_of, hosts_of, server

# molecule/shared/netprobe.py (the probes, shared with molecule/role-nftables);
# tests/e2e (the TURN client) is put on the path by conftest.py.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import matrix_e2e as e2e  # noqa: E402
import netprobe  # noqa: E402

CONTROLLER = "controller"
# Every port a tier of the project may listen on; those of the map's items
# (matrix_services_extra included) are added from the hosts' facts.
TIER_PORTS = [
    ("tcp", 22), ("tcp", 80), ("tcp", 443), ("tcp", 8448), ("tcp", 8008), ("tcp", 5432),
    ("tcp", 3478), ("udp", 3478), ("tcp", 5349), ("udp", 5349),
]
TURN_UDP_PORT = 3478
TURN_DTLS_PORT = 5349
SERVER_GROUPS = ("matrix_db", "matrix_homeserver", "matrix_redis", "matrix_proxy")


def _fact(name):
    content = server(name).file("/etc/ansible/facts.d/nftables.fact").content_string
    return json.loads(content)


@pytest.fixture(scope="module")
def hosts():
    # Molecule's inventory file names the function groups only (the parent
    # group `matrix` comes from the linked hosts.yml).
    return sorted({h for g in SERVER_GROUPS + ("matrix_turn", "matrix_backup") for h in hosts_of(g)})


@pytest.fixture(scope="module")
def addresses(hosts):
    return {name: address_of(name) for name in hosts}


@pytest.fixture(scope="module")
def facts(hosts):
    return {name: _fact(name) for name in hosts}


@pytest.fixture(scope="module")
def controller_address(hosts):
    """The controller as the hosts see it: their default gateway (the Docker host)."""
    route = server(hosts[0]).check_output("ip -4 route show default").split()
    return route[route.index("via") + 1]


@pytest.fixture(scope="module")
def relay_port(facts):
    """A relay port (the last of the range: the least likely to hold a live allocation)."""
    for fact in facts.values():
        for rule in fact["input_rules"]:
            if rule["name"] == "turn-relay":
                return netprobe.sample_port(rule["ports"][-1])
    pytest.fail("no host records the turn-relay rule of the service map")


# Items whose every port is probed (the others: one port of each range).
EVERY_PORT = ("synapse-workers", "synapse-replication", "redis")


def every_port(element):
    """The ports of an nft port element ("8101" or "8101-8105")."""
    first, _, last = str(element).partition("-")
    return range(int(first), int(last or first) + 1)


@pytest.fixture(scope="module")
def ports(facts, relay_port):
    found = set(TIER_PORTS) | {("udp", relay_port)}
    for fact in facts.values():
        for rule in fact["input_rules"]:
            if rule["name"] in EVERY_PORT:
                found |= {(rule["protocol"], port) for e in rule["ports"] for port in every_port(e)}
            elif rule["name"] != "turn-relay":
                found |= {(rule["protocol"], netprobe.sample_port(e)) for e in rule["ports"]}
    return sorted(found, key=lambda p: (p[1], p[0]))


@pytest.fixture(scope="module")
def matrix(hosts, addresses, facts, controller_address, ports):
    """{(target, protocol, port, source): (expected reachable, observed)}, probed once."""
    sources = hosts + [CONTROLLER]
    targets = [(t, proto, port) for t in hosts for proto, port in ports]
    # coturn answers STUN on both its plain and its DTLS port; a bare datagram
    # to a listening port would get silence, which reads as dropped.
    probes = [(addresses[t], proto, port, netprobe.kind_of(proto, port, (TURN_UDP_PORT, TURN_DTLS_PORT)))
              for t, proto, port in targets]
    source_address = dict(addresses, **{CONTROLLER: controller_address})
    cells = {}
    for source in sources:
        results = netprobe.probe_here(probes) if source == CONTROLLER else netprobe.probe_from(server(source), probes)
        for (target, proto, port), seen in zip(targets, results):
            # A host reaching itself goes over loopback, which the firewall
            # accepts; a service's own IPAddressAllow may still refuse it
            # (PostgreSQL admits only the homeserver): shown, not asserted.
            if source == target:
                expected = None
            else:
                expected = netprobe.admitted(facts[target], source_address[source], proto, port)
            cells[(target, proto, port, source)] = (expected, seen)
    rows = [f"{t}:{port}/{proto}" for t, proto, port in targets]
    table = netprobe.format_matrix(
        rows, sources, {(f"{t}:{port}/{proto}", s): v for (t, proto, port, s), v in cells.items()}
    )
    legend = (
        "cell = expected by the map (allow/deny; self = the host itself, over loopback, not asserted)"
        " / observed (open; closed = RST or ICMP port unreachable: got through; filtered = dropped)"
        " + ok or !!"
    )
    (EPHEMERAL / "port-matrix.txt").write_text(legend + "\n" + table + "\n")
    return cells, table, legend


def reachable_from(matrix, target, proto, port):
    cells = matrix[0]
    return sorted(s for (t, p, n, s), (_, seen) in cells.items()
                  if (t, p, n) == (target, proto, port) and seen in netprobe.REACHABLE)


def test_port_matrix_matches_the_service_map(matrix, capsys):
    cells, table, legend = matrix
    with capsys.disabled():
        print(f"\n\nPORT MATRIX (rows: target:port/protocol; columns: source)\n{legend}\n{table}\n")
    wrong = [
        f"{source} -> {target}:{port}/{proto}: expected {'reachable' if expected else 'dropped'}, observed {seen}"
        for (target, proto, port, source), (expected, seen) in cells.items()
        if expected is not None and (seen in netprobe.REACHABLE) != expected
    ]
    assert not wrong, "\n".join(wrong)


def test_synapse_http_only_from_the_proxy_hosts(matrix, hosts):
    # The main process, on the first homeserver host (its workers: the next test).
    for homeserver in hosts_of("matrix_homeserver")[:1]:
        others = [s for s in reachable_from(matrix, homeserver, "tcp", 8008) if s != homeserver]
        assert others == sorted(set(hosts_of("matrix_proxy")) - {homeserver})


def test_workers_from_the_proxies_replication_and_redis_between_homeserver_hosts_only(matrix, facts):
    """Synapse's workers (scenarios with workers): their HTTP listeners admit the proxy hosts, the
    replication listeners and Redis the homeserver hosts, and no one else."""
    allowed = {"synapse-workers": hosts_of("matrix_proxy"), "synapse-replication": hosts_of("matrix_homeserver"),
               "redis": hosts_of("matrix_homeserver")}
    checked = 0
    for host, fact in facts.items():
        for rule in fact["input_rules"]:
            for port in [p for e in rule["ports"] for p in every_port(e)] if rule["name"] in allowed else []:
                others = [s for s in reachable_from(matrix, host, "tcp", port) if s != host]
                assert others == sorted(set(allowed[rule["name"]]) - {host}), (host, rule["name"], port)
                # Open: a listener answers, not only the firewall letting through.
                for source in others:
                    assert matrix[0][(host, "tcp", port, source)][1] == "open", (source, host, port)
                checked += 1
    if not checked:
        pytest.skip("no Synapse workers in this scenario")


def test_postgresql_only_from_the_homeserver_hosts(matrix):
    for db in hosts_of("matrix_db"):
        others = [s for s in reachable_from(matrix, db, "tcp", 5432) if s != db]
        assert others == sorted(set(hosts_of("matrix_homeserver")) - {db})


def test_ssh_only_from_the_admin_networks(matrix, hosts):
    # The scenarios' admin network is the controller alone (10-molecule.yml); the backup host
    # also lets the homeserver in (its SFTP repository, service map item backup-sftp).
    for name in hosts:
        others = [s for s in reachable_from(matrix, name, "tcp", 22) if s != name]
        backups = hosts_of("matrix_homeserver")[:1] if name in hosts_of("matrix_backup") else []
        assert others == sorted([CONTROLLER] + backups)


def test_public_ports_from_everyone(matrix, hosts, relay_port):
    everyone = sorted(hosts + [CONTROLLER])
    for proxy in hosts_of("matrix_proxy"):
        for port in (80, 443):
            assert reachable_from(matrix, proxy, "tcp", port) == everyone
    for turn in hosts_of("matrix_turn"):
        for proto, port in (("udp", TURN_UDP_PORT), ("tcp", TURN_UDP_PORT), ("tcp", 5349), ("udp", 5349),
                            ("udp", relay_port)):
            assert reachable_from(matrix, turn, proto, port) == everyone, f"{turn}:{port}/{proto}"


def test_services_answer_where_the_map_opens_them(matrix):
    """Open (a listener answers), not only let through, from an allowed peer."""
    cells = matrix[0]
    checks = [(h, "tcp", p, CONTROLLER) for h in hosts_of("matrix_proxy") for p in (80, 443)]
    checks += [(h, proto, p, CONTROLLER) for h in hosts_of("matrix_turn")
               for proto, p in (("udp", TURN_UDP_PORT), ("tcp", TURN_UDP_PORT), ("tcp", 5349), ("udp", TURN_DTLS_PORT))]
    checks += [(h, "tcp", 8008, s) for h in hosts_of("matrix_homeserver")[:1] for s in hosts_of("matrix_proxy") if s != h]
    checks += [(h, "tcp", 5432, s) for h in hosts_of("matrix_db") for s in hosts_of("matrix_homeserver") if s != h]
    not_open = [f"{s} -> {h}:{p}/{proto}: {cells[(h, proto, p, s)][1]}" for h, proto, p, s in checks
                if cells[(h, proto, p, s)][1] != "open"]
    assert not not_open, "\n".join(not_open)


# --------------------------------------------------------------------------
# TURN relays and the server tiers
# --------------------------------------------------------------------------


def _rest_credentials(lifetime=600):
    """TURN REST API credentials, as Synapse derives them from the shared secret."""
    secret = (CREDENTIALS / "turn_shared_secret").read_text().strip()
    username = f"{int(time.time()) + lifetime}:network-policy"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _in_ranges(address, ranges):
    address = ipaddress.ip_address(address)
    for text in ranges:
        text = str(text)
        if "/" in text:
            if address in ipaddress.ip_network(text, strict=False):
                return True
            continue
        first, _, last = text.partition("-")
        if ipaddress.ip_address(first) <= address <= ipaddress.ip_address(last or first):
            return True
    return False


@pytest.fixture(scope="module")
def permission_cases(addresses):
    """{peer address: expected CreatePermission answer (0 = allowed, 403)} per TURN host."""
    turn_hosts = hosts_of("matrix_turn")
    servers = sorted({h for g in SERVER_GROUPS for h in hosts_of(g)})
    protected = sorted({addresses[h] for h in servers if h not in turn_hosts})
    cases = {}
    for turn in turn_hosts:
        # The allowed ranges coturn was given (the operator's, split around the
        # server tiers): their addresses next to a server must be accepted.
        config = server(turn).file("/etc/turnserver.conf").content_string.splitlines()
        operator_ranges = [line.split("=", 1)[1].strip() for line in config if line.startswith("allowed-peer-ip=")]
        expected = {a: 403 for a in protected}
        # Relays of two users of the same TURN host reach each other.
        expected[addresses[turn]] = 0
        for address in protected:
            for neighbour in (ipaddress.ip_address(address) - 1, ipaddress.ip_address(address) + 1):
                if _in_ranges(neighbour, operator_ranges) and str(neighbour) not in expected:
                    expected[str(neighbour)] = 0
        # An address of the operator's ranges that is no server: allowed.
        for text in operator_ranges:
            first = ipaddress.ip_address(str(text).split("-")[0].split("/")[0])
            for candidate in map(str, (first + 1, first + 2, first + 3, first + 4)):
                if candidate not in protected and candidate != addresses[turn]:
                    expected.setdefault(candidate, 0)
                    break
        cases[turn] = expected
    return cases, protected


def test_turn_relays_cannot_reach_the_server_tiers(addresses, permission_cases):
    cases, protected = permission_cases
    username, password = _rest_credentials()

    async def scenario(turn_address, peers):
        async with e2e.TurnProbe((turn_address, TURN_UDP_PORT), username, password) as probe:
            await probe.allocate()
            return {peer: await probe.create_permission(peer) for peer in peers}

    for turn, expected in cases.items():
        answers = asyncio.run(asyncio.wait_for(scenario(addresses[turn], sorted(expected)), 120))
        print(f"CreatePermission via {turn}: {answers} (server-tier addresses: {protected})")
        assert answers == expected, f"via {turn}: expected {expected}, got {answers}"


def test_turnserver_account_reaches_no_server_tier_port(addresses, relay_port):
    """coturn's account (turnserver) on a TURN host: every server-tier port is
    dropped, while root on the same host gets through where the map says; the
    relay ports on the TURN host's own address stay reachable."""
    servers = sorted({h for g in SERVER_GROUPS for h in hosts_of(g)})
    for turn in hosts_of("matrix_turn"):
        targets = sorted({addresses[h] for h in servers} | {addresses[turn]})
        probes = [(a, "tcp", p, "tcp") for a in targets for p in (22, 80, 443, 5432, 8008)]
        probes.append((addresses[turn], "udp", relay_port, "udp"))
        as_turnserver = netprobe.probe_from(server(turn), probes, user="turnserver")
        as_root = netprobe.probe_from(server(turn), probes)
        leaks = [f"{a}:{p}/{proto} {seen}" for (a, proto, p, _), seen in zip(probes[:-1], as_turnserver[:-1])
                 if seen != "filtered"]
        assert not leaks, f"turnserver on {turn} reaches: {leaks}"
        assert as_turnserver[-1] == "closed", f"relay port on {turn}'s own address: {as_turnserver[-1]}"
        proxies = {addresses[h] for h in hosts_of("matrix_proxy")}
        assert all(seen == "open" for (a, _, p, _), seen in zip(probes, as_root) if a in proxies and p == 443)
