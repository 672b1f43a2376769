"""roles/nftables with the project's service map, checked from outside each host.

Three hosts (database, homeserver, TURN) converged with the map of
group_vars/all/services.yml plus the operator additions of
inventory/group_vars/matrix/scenario.yml. Nothing listens on most ports: a
port the firewall lets through answers RST (TCP) or ICMP port unreachable
(UDP), a dropped one stays silent, which is what is measured.
"""
import ipaddress
import json
import os

import netprobe  # molecule/shared, put on the path by conftest.py
import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
DB = "role-nftables-db"
HOMESERVER = "role-nftables-homeserver"
TURN = "role-nftables-turn"
HOSTS = [DB, HOMESERVER, TURN]
CONTROLLER = "controller"

testinfra_hosts = [f"ansible://{h}?ansible_inventory={INVENTORY}" for h in HOSTS]


def server(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def addresses():
    return {name: server(name).check_output("hostname -I").split()[0] for name in HOSTS}


@pytest.fixture(scope="module")
def controller_address():
    """The controller as the hosts see it: their default gateway (the Docker host)."""
    route = server(DB).check_output("ip -4 route show default").split()
    return route[route.index("via") + 1]


@pytest.fixture(scope="module")
def facts():
    return {name: json.loads(server(name).file("/etc/ansible/facts.d/nftables.fact").content_string)
            for name in HOSTS}


def probe_all(sources, probes):
    """{source: [results]} for the probes run from each source (host name or CONTROLLER)."""
    results = {}
    for source in sources:
        if source == CONTROLLER:
            results[source] = netprobe.probe_here(probes)
        else:
            results[source] = netprobe.probe_from(server(source), probes)
    return results


def test_ruleset_is_loaded_with_default_drop(host):
    service = host.service("nftables")
    assert service.is_enabled, "nftables.service is not enabled at boot"
    live = host.check_output("nft list table inet matrix_filter")
    assert "hook input priority filter; policy drop;" in live
    assert "hook forward priority filter; policy drop;" in live
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0


def test_docker_dns_survives_unless_the_whole_ruleset_is_flushed(host):
    """flush ruleset only where asked (TURN host here): Docker's DNS NAT table
    lives in the container's ruleset and is what apt and pip resolve through."""
    tables = host.check_output("nft list tables")
    if host.backend.hostname == TURN:
        assert tables.split() == ["table", "inet", "matrix_filter"], tables
        assert host.file("/etc/nftables.conf").contains("^flush ruleset$")
    else:
        assert "table ip nat" in tables, tables
        assert not host.file("/etc/nftables.conf").contains("^flush ruleset$")


def test_fact_records_the_map_items_of_the_host(host, facts):
    names = {rule["name"] for rule in facts[host.backend.hostname]["input_rules"]}
    expected = {
        DB: {"ssh", "exporter", "postgresql", "syslog-tls", "monitoring-udp"},
        HOMESERVER: {"ssh", "exporter", "synapse-http"},
        TURN: {"ssh", "exporter", "turn-udp", "turn-tcp", "turn-relay"},
    }[host.backend.hostname]
    assert names == expected


PORTS = [
    ("tcp", 22), ("tcp", 5432), ("tcp", 8008), ("tcp", 9100), ("tcp", 6514), ("tcp", 443),
    ("udp", 9200), ("udp", 9201), ("udp", 3478), ("tcp", 3478), ("tcp", 5349), ("udp", 5349), ("udp", 65535),
]


def test_port_matrix_matches_the_map(addresses, controller_address, facts, capsys):
    """Every port of the list on every host, from every host and the controller."""
    sources = HOSTS + [CONTROLLER]
    probes = [(addresses[t], proto, port, netprobe.kind_of(proto, port)) for t in HOSTS for proto, port in PORTS]
    observed = probe_all(sources, probes)
    source_address = dict(addresses, **{CONTROLLER: controller_address})
    rows, cells, wrong = [], {}, []
    for index, (address, proto, port, _) in enumerate(probes):
        target = next(t for t in HOSTS if addresses[t] == address)
        row = f"{target}:{port}/{proto}"
        rows.append(row)
        for source in sources:
            expected = source == target or netprobe.admitted(facts[target], source_address[source], proto, port)
            seen = observed[source][index]
            cells[(row, source)] = (expected, seen)
            if (seen in netprobe.REACHABLE) != expected:
                wrong.append(f"{source} -> {row}: expected {'reachable' if expected else 'dropped'}, saw {seen}")
    with capsys.disabled():
        print("\n" + netprobe.format_matrix(rows, sources, cells))
    assert not wrong, "\n".join(wrong)
    # The map's own statements, independently of the recorded fact.
    matrix = {(row, source): seen in netprobe.REACHABLE for (row, source), (_, seen) in cells.items()}
    assert [s for s in sources if matrix[(f"{DB}:5432/tcp", s)]] == [DB, HOMESERVER]
    assert [s for s in sources if matrix[(f"{HOMESERVER}:8008/tcp", s)]] == [HOMESERVER]
    for target in HOSTS:
        assert [s for s in sources if matrix[(f"{target}:22/tcp", s)]] == [target, CONTROLLER]
        assert [s for s in sources if matrix[(f"{target}:9100/tcp", s)]] == sorted({target, HOMESERVER}, key=sources.index)
    assert [s for s in sources if matrix[(f"{DB}:9200/udp", s)]] == [DB, CONTROLLER]
    assert [s for s in sources if matrix[(f"{DB}:6514/tcp", s)]] == [DB, TURN]
    assert all(matrix[(f"{TURN}:{p}", s)] for p in ("3478/udp", "3478/tcp", "5349/tcp", "5349/udp", "65535/udp")
               for s in sources)


def test_turnserver_account_cannot_reach_the_server_tiers(addresses):
    """On the TURN host, coturn's account reaches no server-tier address
    (root on the same host does: the map admits the TURN host there), except
    the relay ports on the TURN host's own address."""
    turn = server(TURN)
    probes = [
        (addresses[DB], "tcp", 6514, "tcp"),
        (addresses[TURN], "tcp", 22, "tcp"),
        (addresses[TURN], "udp", 65535, "udp"),
        (addresses[TURN], "udp", 49152, "udp"),
    ]
    as_root = netprobe.probe_from(turn, probes)
    as_turnserver = netprobe.probe_from(turn, probes, user="turnserver")
    assert as_root == ["closed", "closed", "closed", "closed"], as_root
    assert as_turnserver == ["filtered", "filtered", "closed", "closed"], as_turnserver


def test_turnserver_account_is_a_locked_system_account():
    user = server(TURN).user("turnserver")
    assert user.exists and user.uid < 1000
    assert user.shell in ("/usr/sbin/nologin", "/bin/false")


def test_output_rules_only_on_the_turn_host(host, facts):
    drops = facts[host.backend.hostname]["output_drops"]
    if host.backend.hostname != TURN:
        assert drops == []
        return
    (drop,) = drops
    assert drop["user"] == "turnserver"
    # Collapsed into networks where addresses are adjacent (172.23.0.2/31).
    covered = {str(a) for n in drop["destinations"]["ip"] for a in ipaddress.ip_network(n)}
    assert covered == {server(h).check_output("hostname -I").split()[0] for h in HOSTS}
