"""The topology (playbooks/filter_plugins/matrix_topology.py, group_vars/all/topology.yml): who
reaches whom at which address, decided in one place, for one host, four, and a mixed layout."""
import importlib.util
import pathlib
import re

import pytest
import yaml

from conftest import REPO

_SPEC = importlib.util.spec_from_file_location("matrix_topology", REPO / "playbooks" / "filter_plugins" / "matrix_topology.py")
topology = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(topology)

SERVICES = [
    {"name": "ssh", "groups": ["matrix"], "protocol": "tcp", "ports": [22], "from_groups": [], "from_networks": ["10.9.0.0/24"]},
    {"name": "postgresql", "groups": ["matrix_db"], "protocol": "tcp", "ports": [5432], "from_groups": ["matrix_homeserver"],
     "from_networks": []},
    {"name": "synapse-http", "groups": ["matrix_homeserver"], "protocol": "tcp", "ports": [8008], "from_groups": ["matrix_proxy"],
     "from_networks": []},
    {"name": "https", "groups": ["matrix_proxy"], "protocol": "tcp", "ports": [443], "from_groups": [], "from_networks": ["any"]},
]


def _layout(**tiers):
    """groups and addresses from {group: [host, ...]}; host addresses 10.0.0.<n> in order of appearance."""
    groups, addresses = {}, {}
    for group, hosts in tiers.items():
        groups[f"matrix_{group}"] = hosts
        for host in hosts:
            addresses.setdefault(host, f"10.0.0.{len(addresses) + 1}")
    groups["matrix"] = list(addresses)
    return groups, addresses


def _view(groups, addresses, host):
    return topology.matrix_topology(SERVICES, groups, addresses, host)


def test_one_host_uses_loopback_and_opens_only_what_the_public_reaches():
    groups, addresses = _layout(db=["aio"], homeserver=["aio"], proxy=["aio"])
    view = _view(groups, addresses, "aio")
    assert view["synapse-http"]["listen"] == ["127.0.0.1"] and view["synapse-http"]["reach"] == ["127.0.0.1"]
    assert view["postgresql"]["reach"] == ["127.0.0.1"] and view["postgresql"]["local_client"]
    assert view["postgresql"]["remote"] is False and view["postgresql"]["clients"] == []
    assert view["https"]["listen"] == ["10.0.0.1"]
    # The internal ports have a rule with no source: closed to the network.
    rules = {v["rule"]["name"]: v["rule"]["sources"] for v in view.values() if v["serves"]}
    assert rules == {"ssh": ["10.9.0.0/24"], "postgresql": [], "synapse-http": [], "https": "any"}


def test_a_network_let_past_the_proxy_adds_the_private_address_and_only_that_source():
    """matrix_synapse_direct_networks (the service map's from_networks of synapse-http): the
    proxy beside the homeserver keeps loopback; the named network reaches the private address."""
    groups, addresses = _layout(db=["aio"], homeserver=["aio"], proxy=["aio"])
    services = [dict(s, from_networks=["10.9.0.5/32"]) if s["name"] == "synapse-http" else s for s in SERVICES]
    view = topology.matrix_topology(services, groups, addresses, "aio")["synapse-http"]
    assert view["listen"] == ["127.0.0.1", "10.0.0.1"] and view["reach"] == ["127.0.0.1"]
    assert view["rule"]["sources"] == ["10.9.0.5/32"]


def test_four_hosts_use_private_addresses_and_each_server_admits_its_clients_only():
    groups, addresses = _layout(db=["db1"], homeserver=["hs1"], proxy=["proxy1", "proxy2"])
    hs = _view(groups, addresses, "hs1")
    assert hs["postgresql"]["reach"] == ["10.0.0.1"] and hs["postgresql"]["remote"] is True
    assert hs["synapse-http"]["listen"] == ["10.0.0.2"]
    assert hs["synapse-http"]["rule"]["sources"] == ["10.0.0.3", "10.0.0.4"]
    assert "rule" not in hs["https"]
    db = _view(groups, addresses, "db1")
    assert db["postgresql"]["listen"] == ["10.0.0.1"] and db["postgresql"]["clients"] == ["10.0.0.2"]
    assert not db["postgresql"]["local_client"]
    for proxy in ("proxy1", "proxy2"):
        assert _view(groups, addresses, proxy)["synapse-http"]["reach"] == ["10.0.0.2"]


def test_a_mixed_layout_listens_where_each_client_is():
    """A homeserver with a proxy beside it and another proxy elsewhere: loopback and the private
    address; each proxy reaches it its own way."""
    groups, addresses = _layout(db=["hs1"], homeserver=["hs1", "hs2"], proxy=["hs1", "proxy2"])
    hs1 = _view(groups, addresses, "hs1")
    assert hs1["synapse-http"]["listen"] == ["127.0.0.1", "10.0.0.1"]
    assert hs1["synapse-http"]["reach"] == ["127.0.0.1", "10.0.0.2"]
    assert hs1["postgresql"]["local_client"] and hs1["postgresql"]["clients"] == ["10.0.0.2"]
    assert _view(groups, addresses, "proxy2")["synapse-http"]["reach"] == ["10.0.0.1", "10.0.0.2"]
    assert _view(groups, addresses, "hs2")["postgresql"]["reach"] == ["10.0.0.1"]


def test_a_host_without_address_or_a_name_used_twice_is_an_error():
    groups, addresses = _layout(db=["db1"], homeserver=["hs1"], proxy=["proxy1"])
    del addresses["hs1"]
    with pytest.raises(Exception, match="no private address for hs1"):
        _view(groups, addresses, "db1")
    groups, addresses = _layout(db=["db1"], homeserver=["hs1"], proxy=["proxy1"])
    with pytest.raises(Exception, match="names 'ssh' twice"):
        topology.matrix_topology(SERVICES + SERVICES[:1], groups, addresses, "db1")


def test_the_wiring_asks_same_host_nowhere_but_the_topology():
    """No wiring file compares a host with inventory_hostname to choose an address: that is the
    topology's question (group membership, "is this host a TURN host?", stays allowed)."""
    same_host = re.compile(r"==\s*inventory_hostname|inventory_hostname\s*==|equalto',\s*inventory_hostname|"
                           r"difference\(\[inventory_hostname\]\)")
    offenders = [f"{path.name}: {line.strip()}" for path in sorted((REPO / "group_vars" / "all").glob("*.yml"))
                 for line in path.read_text().splitlines() if same_host.search(line)]
    assert offenders == []


def test_the_service_map_has_what_the_topology_reads():
    services = yaml.safe_load((REPO / "group_vars" / "all" / "services.yml").read_text())["matrix_services"]
    assert {"postgresql", "synapse-http"} <= {s["name"] for s in services}
