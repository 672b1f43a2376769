"""coturn_split_peer_ranges: the allowed peer ranges minus the protected addresses.

coturn checks allowed-peer-ip BEFORE denied-peer-ip: an address inside an
allowed range is reachable through a relay even if it is also denied. To keep
a whole-network allow-list (a state network on private addressing) usable
without opening the servers on it, each allowed range is cut around the
protected addresses: 10.0.0.0/24 minus 10.0.0.5 gives 10.0.0.0-10.0.0.4 and
10.0.0.6-10.0.0.255.

Input items: an address, "first-last" (coturn's form) or a CIDR; protected:
addresses or CIDRs. Output: coturn's form, single addresses or "first-last",
in order, overlapping ranges merged (Python's ipaddress; no netaddr needed).
"""

import ipaddress

from ansible.errors import AnsibleFilterError


def _interval(text, what):
    """(first, last) ip_address objects of an address, a-b range or CIDR."""
    text = str(text).strip()
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
            return network[0], network[-1]
        if "-" in text:
            first, last = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
        else:
            first = last = ipaddress.ip_address(text)
    except ValueError as error:
        raise AnsibleFilterError(f"coturn_split_peer_ranges: {what} {text!r}: {error}") from error
    if first.version != last.version or first > last:
        raise AnsibleFilterError(f"coturn_split_peer_ranges: {what} {text!r} is not an ascending range")
    return first, last


def _merge(intervals):
    merged = []
    for first, last in sorted(intervals, key=lambda i: (i[0].version, i[0], i[1])):
        if merged and first.version == merged[-1][1].version and int(first) <= int(merged[-1][1]) + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


def coturn_split_peer_ranges(allowed, protected=None):
    remaining = _merge([_interval(a, "allowed range") for a in allowed or []])
    for hole_first, hole_last in (_interval(p, "protected address") for p in protected or []):
        pieces = []
        for first, last in remaining:
            if first.version != hole_first.version or hole_last < first or hole_first > last:
                pieces.append((first, last))
                continue
            if first < hole_first:
                pieces.append((first, hole_first - 1))
            if hole_last < last:
                pieces.append((hole_last + 1, last))
        remaining = pieces
    return [str(first) if first == last else f"{first}-{last}" for first, last in remaining]


class FilterModule:
    def filters(self):
        return {"coturn_split_peer_ranges": coturn_split_peer_ranges}
