"""The topology: who is where and who talks to whom on which port, computed in one place.

group_vars/all/topology.yml applies it to the service map (group_vars/all/services.yml and the
inventory's matrix_services_extra) for the current host; the roles' inputs (where Synapse
listens, where it finds the database, the proxy's upstreams, PostgreSQL's clients), the firewall
(group_vars/all/firewall.yml) and the audit all read the result, so that "is it on the same
host?" is answered here only.

    matrix_topology(services, groups, addresses, host) -> {service name: view}

services:  the map's items (name, groups, protocol, ports, from_groups, from_networks)
groups:    the inventory's groups
addresses: {host: its private address} for every host of the groups
host:      the host the view is computed for

A view, as seen from that host:
  servers      hosts that listen (members of the item's groups)
  serves       whether this host is one of them
  reach        the address of each server, in server order, as this host reaches it: loopback
               for itself, the private address for another host
  address_of   the same as {server: address}
  listen       the addresses this host listens on for its clients (none unless it serves):
               loopback if a client is on this host, the private address if one is elsewhere
               or the item admits networks
  local_client whether a client host of this server is this host itself
  clients      the private addresses of the client hosts (from_groups) other than this host
  remote       whether some client reaches some server across the network (any host pair)
  rule         the firewall's input rule on this host (name, protocol, ports, sources: "any",
               or the item's networks then the clients' addresses), when it serves
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

LOOPBACK = "127.0.0.1"


def _members(groups, names):
    members = []
    for name in names or []:
        for host in groups.get(name, []):
            if host not in members:
                members.append(host)
    return members


def matrix_topology(services, groups, addresses, host):
    views = {}
    for service in services:
        name = service.get("name", "")
        if name in views:
            raise AnsibleFilterError(f"the service map names {name!r} twice")
        servers = _members(groups, service.get("groups"))
        clients = _members(groups, service.get("from_groups"))
        missing = sorted(h for h in servers + clients if not addresses.get(h))
        if missing:
            raise AnsibleFilterError(f"service {name}: no private address for {', '.join(missing)}")
        networks = list(service.get("from_networks") or [])
        serves = host in servers
        local_client = serves and host in clients
        remote_clients = [addresses[c] for c in clients if c != host]
        listen = []
        if serves:
            if local_client:
                listen.append(LOOPBACK)
            if remote_clients or networks:
                listen.append(addresses[host])
        view = {
            "servers": servers,
            "serves": serves,
            "reach": [LOOPBACK if s == host else addresses[s] for s in servers],
            "address_of": {s: LOOPBACK if s == host else addresses[s] for s in servers},
            "listen": listen,
            "local_client": local_client,
            "clients": remote_clients if serves else [],
            "remote": any(c != s for c in clients for s in servers),
        }
        # A service whose port list is empty on this host (a worker port on a host without
        # workers) opens nothing.
        if serves and service.get("ports"):
            view["rule"] = {
                "name": name,
                "protocol": service.get("protocol", ""),
                "ports": service.get("ports", []),
                "sources": "any" if "any" in networks else networks + remote_clients,
            }
        views[name] = view
    return views


class FilterModule:
    def filters(self):
        return {"matrix_topology": matrix_topology}
