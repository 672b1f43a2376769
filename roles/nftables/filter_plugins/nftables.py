"""Address and port helpers of the nftables role (Python's ipaddress: the
controller needs no netaddr).

- nftables_problems(rules, drops): what is wrong in nftables_input_rules and
  nftables_output_drops, as sentences (empty list: all good).
- nftables_normalize(rules): the rules with sources split by family and
  collapsed ({"ip": [...], "ip6": [...]}, or "any"), ports as nft elements.
- nftables_normalize_drops(drops): the same for the output drops.
- nftables_admits(rules, address, protocol, port): whether a rule admits
  that source address on that port (used to refuse a ruleset that would
  shut Ansible's own SSH connection out).
"""

import ipaddress
import re

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
PROTOCOLS = ("tcp", "udp")


def _port_range(port):
    """(first, last) of an int, "n" or "first-last"; raises ValueError."""
    if isinstance(port, bool):
        raise ValueError(port)
    if isinstance(port, int):
        first = last = port
    else:
        text = str(port).strip()
        match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
        if not match:
            raise ValueError(port)
        first = int(match.group(1))
        last = int(match.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise ValueError(port)
    return first, last


def _network(text):
    return ipaddress.ip_network(str(text).strip(), strict=False)


def _port_problems(where, ports):
    if not isinstance(ports, list) or not ports:
        return [f"{where}: ports must be a non-empty list (got {ports!r})"]
    problems = []
    for port in ports:
        try:
            _port_range(port)
        except (ValueError, TypeError):
            problems.append(f"{where}: port {port!r} is neither 1-65535 nor a 'first-last' range")
    return problems


def _address_problems(where, key, addresses):
    if not isinstance(addresses, list):
        return [f"{where}: {key} must be a list of addresses or CIDRs (got {addresses!r})"]
    problems = []
    for address in addresses:
        try:
            _network(address)
        except (ValueError, TypeError):
            problems.append(f"{where}: {key} entry {address!r} is not an IP address or CIDR")
    return problems


def nftables_problems(rules, drops=None):
    problems = []
    names = []
    if not isinstance(rules, list):
        return [f"nftables_input_rules must be a list (got {type(rules).__name__})"]
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            problems.append(f"nftables_input_rules[{index}] is not a mapping")
            continue
        name = rule.get("name", "")
        where = f"input rule {name or index!r}"
        if not NAME.match(str(name)):
            problems.append(f"{where}: name must match [a-z0-9][a-z0-9-]* (got {name!r})")
        names.append(name)
        unknown = sorted(set(rule) - {"name", "protocol", "ports", "sources"})
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        if rule.get("protocol") not in PROTOCOLS:
            problems.append(f"{where}: protocol must be tcp or udp (got {rule.get('protocol')!r})")
        problems += _port_problems(where, rule.get("ports"))
        sources = rule.get("sources")
        if sources != "any":
            problems += _address_problems(where, "sources", sources)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"input rule name(s) used twice: {', '.join(map(str, duplicates))}")
    if not isinstance(drops, list):
        return problems + [f"nftables_output_drops must be a list (got {type(drops).__name__})"]
    for index, drop in enumerate(drops):
        if not isinstance(drop, dict):
            problems.append(f"nftables_output_drops[{index}] is not a mapping")
            continue
        where = f"output drop {drop.get('name') or index!r}"
        if not NAME.match(str(drop.get("name", ""))):
            problems.append(f"{where}: name must match [a-z0-9][a-z0-9-]*")
        if not USER.match(str(drop.get("user", ""))):
            problems.append(f"{where}: user must be a system account name (got {drop.get('user')!r})")
        problems += _address_problems(where, "destinations", drop.get("destinations"))
        if not drop.get("destinations"):
            problems.append(f"{where}: destinations must not be empty")
        for exception in drop.get("exceptions", []) or []:
            if not isinstance(exception, dict) or exception.get("protocol") not in PROTOCOLS:
                problems.append(f"{where}: each exception needs protocol tcp or udp")
                continue
            problems += _port_problems(where + " exception", exception.get("ports"))
            problems += _address_problems(where + " exception", "destinations", exception.get("destinations"))
    return problems


def _ports(ports):
    """Sorted nft set elements ("80", "49152-65535"), duplicates merged."""
    ranges = sorted(_port_range(p) for p in ports)
    merged = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return [str(a) if a == b else f"{a}-{b}" for a, b in merged]


def _families(addresses):
    """{"ip": [...], "ip6": [...]}: collapsed networks, host routes as plain addresses."""
    result = {}
    for family, version in (("ip", 4), ("ip6", 6)):
        networks = [n for n in map(_network, addresses) if n.version == version]
        result[family] = [
            str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
            for n in ipaddress.collapse_addresses(networks)
        ]
    return result


def nftables_normalize(rules):
    normalized = []
    for rule in rules:
        sources = rule["sources"]
        normalized.append(
            {
                "name": rule["name"],
                "protocol": rule["protocol"],
                "ports": _ports(rule["ports"]),
                "sources": "any" if sources == "any" else _families(sources),
            }
        )
    return normalized


def nftables_normalize_drops(drops):
    normalized = []
    for drop in drops:
        normalized.append(
            {
                "name": drop["name"],
                "user": drop["user"],
                "destinations": _families(drop["destinations"]),
                "exceptions": [
                    {
                        "protocol": e["protocol"],
                        "ports": _ports(e["ports"]),
                        "destinations": _families(e["destinations"]),
                    }
                    for e in drop.get("exceptions", []) or []
                ],
            }
        )
    return normalized


def nftables_admits(rules, address, protocol="tcp", port=22):
    """True when one of the (raw) input rules lets ``address`` reach ``port``."""
    source = ipaddress.ip_address(str(address).strip())
    port = int(port)
    for rule in rules:
        if rule.get("protocol") != protocol:
            continue
        if not any(a <= port <= b for a, b in map(_port_range, rule.get("ports", []))):
            continue
        sources = rule.get("sources")
        if sources == "any" or any(source in _network(s) for s in sources):
            return True
    return False


class FilterModule:
    def filters(self):
        return {
            "nftables_problems": nftables_problems,
            "nftables_normalize": nftables_normalize,
            "nftables_normalize_drops": nftables_normalize_drops,
            "nftables_admits": nftables_admits,
        }
