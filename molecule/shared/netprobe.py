"""Port probes for the network-policy tests, from the controller or from a test host.

A probe is (address, protocol, port, kind) and answers one of:
- tcp:  "open" (connected), "closed" (RST: the firewall let it through, nothing
  listens), "filtered" (no answer within the timeout: dropped);
- stun: a STUN Binding request over UDP: "open" (a STUN answer), "closed" (ICMP
  port unreachable), "filtered" (silence);
- udp:  a datagram: "closed" (ICMP port unreachable: it got through), "open"
  (an answer), "filtered" (silence: dropped, or a silent listener).
The same code runs on the controller and, as a `python3 -c` program, on the
hosts (as root or as another account), so that every vantage point probes
alike. Only addresses the tests created are probed.
"""

import json
import shlex

REACHABLE = {"open", "closed"}

# Runs as a program: argv[1] is a JSON list of [address, protocol, port, kind].
PROBE_PROGRAM = r'''
import concurrent.futures, json, os, socket, struct, sys

TCP_TIMEOUT = 2.0
UDP_TIMEOUT = 1.0
UDP_TRIES = 3

def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET

def tcp(address, port):
    with socket.socket(family(address), socket.SOCK_STREAM) as s:
        s.settimeout(TCP_TIMEOUT)
        try:
            s.connect((address, port))
            return "open"
        except ConnectionRefusedError:
            return "closed"
        except (socket.timeout, TimeoutError):
            return "filtered"
        except OSError as error:
            return "error: " + (error.strerror or str(error))

def udp(address, port, stun):
    with socket.socket(family(address), socket.SOCK_DGRAM) as s:
        s.settimeout(UDP_TIMEOUT)
        s.connect((address, port))
        txid = os.urandom(12)
        payload = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid if stun else b"netprobe"
        for _ in range(UDP_TRIES):
            try:
                s.send(payload)
                data = s.recv(2048)
            except ConnectionRefusedError:
                return "closed"
            except (socket.timeout, TimeoutError):
                continue
            except OSError as error:
                return "error: " + (error.strerror or str(error))
            if not stun or (len(data) >= 20 and data[8:20] == txid):
                return "open"
        return "filtered"

def probe(item):
    address, protocol, port, kind = item
    if kind == "tcp":
        return tcp(address, port)
    return udp(address, port, stun=(kind == "stun"))

probes = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
    print(json.dumps(list(pool.map(probe, probes))))
'''


def _normalize(probes):
    return [[str(a), str(p), int(n), str(k)] for a, p, n, k in probes]


def probe_here(probes):
    """Run the probes from the controller; return their results in order."""
    import subprocess
    import sys

    probes = _normalize(probes)
    if not probes:
        return []
    output = subprocess.run(
        [sys.executable, "-c", PROBE_PROGRAM, json.dumps(probes)],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    return json.loads(output)


def probe_from(host, probes, user=None):
    """Run the probes on a testinfra host (as ``user``, default root)."""
    probes = _normalize(probes)
    if not probes:
        return []
    command = "python3 -c {} {}".format(shlex.quote(PROBE_PROGRAM), shlex.quote(json.dumps(probes)))
    if user:
        command = "runuser -u {} -- {}".format(shlex.quote(user), command)
    result = host.run(command)
    assert result.rc == 0, f"probe program failed on {host.backend.hostname}: {result.stderr}"
    return json.loads(result.stdout)


def kind_of(protocol, port, stun_ports=()):
    """Probe kind for a port: STUN on the TURN listener, plain UDP elsewhere."""
    if protocol == "tcp":
        return "tcp"
    return "stun" if int(port) in stun_ports else "udp"


def sample_port(element):
    """One port of an nft port element ("80" or "49152-65535": the last one,
    least likely to hold a live relay allocation)."""
    return int(str(element).split("-")[-1])


def admitted(fact, source, protocol, port):
    """Whether a host's recorded rules (its nftables local fact) admit ``source``."""
    import ipaddress

    address = ipaddress.ip_address(source)
    for rule in fact["input_rules"]:
        if rule["protocol"] != protocol:
            continue
        ranges = [tuple(map(int, (e.split("-") + [e])[:2])) for e in map(str, rule["ports"])]
        if not any(first <= port <= last for first, last in ranges):
            continue
        if rule["sources"] == "any":
            return True
        networks = rule["sources"].get("ip", []) + rule["sources"].get("ip6", [])
        if any(address in ipaddress.ip_network(n, strict=False) for n in networks):
            return True
    return False


def format_matrix(rows, columns, cells):
    """A text table: rows x columns, cells[(row, column)] -> (expected, observed)."""
    def cell(row, column):
        expected, observed = cells[(row, column)]
        if expected is None:  # not asserted (a host probing itself)
            return f"self/{observed}"
        mark = "ok" if (observed in REACHABLE) == expected else "!!"
        return f"{'allow' if expected else 'deny'}/{observed} {mark}"

    width = max([len(r) for r in rows] + [10])
    col_width = max([len(c) for c in columns] + [len("allow/filtered ok")])
    lines = [" " * width + " | " + " | ".join(c.ljust(col_width) for c in columns)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(row.ljust(width) + " | " + " | ".join(cell(row, c).ljust(col_width) for c in columns))
    return "\n".join(lines)
