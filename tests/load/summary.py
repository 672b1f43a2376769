"""The load benchmark's table, ratios and per-request costs (scripts/bench-load.sh).

Reads the JSON lines matrix_load.py wrote (one per run: set-up label, N users) and prints:
  - one row per run: offered and delivered messages/s, send-to-receive latency p50/p95/p99,
    error rate, server CPU (cores) and the Synapse processes' memory;
  - the ratios, per N: toolkit monolith / stock (throughput, p95), workers / monolith; and, when
    the direct set-up ran, the split of monolith / stock into direct / stock (the hardened host,
    sandbox, firewall and settings) and monolith / direct (the proxy and TLS);
  - the growth with N, per set-up (relative to the smallest N);
  - the costs the capacity model uses (docs/capacity.md): CPU-seconds per connected idle user
    per second, CPU-seconds per message sent (server side, the idle cost taken off), per
    delivery, and the memory per user (slope of the Synapse processes' PSS over N).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

SETUPS = ("stock", "direct", "monolith", "workers")


def synapse_pss(run: dict) -> float:
    return sum(p["pss_mib"] for name, p in run["load"]["processes"].items() if name.startswith("synapse:"))


def lat(run: dict | None, q: int):
    """A latency percentile (ms): JSON keeps the percentiles as strings."""
    return run["latency_ms"][str(q)] if run else None


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b not in (None, 0) else "n/a"


def slope(points):
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else None


def costs(run: dict) -> dict:
    n = run["users"]
    idle_cores = run["idle"]["cores"] or 0.0
    load = run["load"]
    busy = load["cpu_total_s"] - idle_cores * load["seconds"]
    return {
        "idle_cpu_per_user_s": idle_cores / n,
        "cpu_per_message_s": busy / run["sent"] if run["sent"] else None,
        "cpu_per_delivery_s": busy / run["delivered"] if run["delivered"] else None,
    }


def main(path: str) -> None:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    by = {(r["label"], r["users"]): r for r in runs}
    sizes = sorted({r["users"] for r in runs})
    header = (f"{'set-up':<9} {'N':>4} {'offered/s':>9} {'sent/s':>7} {'deliv/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>7} {'errors':>7} {'cores':>6} {'idle':>5} {'Synapse MiB':>11} {'procs':>5}")
    print(header)
    print("-" * len(header))
    for n in sizes:
        for setup in SETUPS:
            r = by.get((setup, n))
            if not r:
                continue
            procs = sum(1 for name in r["load"]["processes"] if name.startswith("synapse:"))
            print(f"{setup:<9} {n:>4} {n * r['rate_per_user']:>9.2f} {r['sent_per_s']:>7.2f} {r['delivered_per_s']:>8.2f} "
                  f"{lat(r, 50)!s:>7} {lat(r, 95)!s:>7} {lat(r, 99)!s:>7} {r['error_rate'] * 100:>6.2f}% {r['load']['cores']:>6.2f} "
                  f"{r['idle']['cores']:>5.2f} {synapse_pss(r):>11.0f} {procs:>5}")
    print()
    print("Ratios, per N (throughput = deliveries/s; latency = send-to-receive p95):")
    for n in sizes:
        s, d, m, w = (by.get((x, n)) for x in SETUPS)

        def p95(r):
            return lat(r, 95)

        def tput(r):
            return r["delivered_per_s"] if r else None
        print(f"  N={n:<4} ours/stock throughput {ratio(tput(m), tput(s))} (target >= 1.0), "
              f"ours/stock p95 {ratio(p95(m), p95(s))} (target <= 1.2); "
              f"workers/monolith throughput {ratio(tput(w), tput(m))}, p95 {ratio(p95(w), p95(m))}; "
              f"workers/stock throughput {ratio(tput(w), tput(s))}, p95 {ratio(p95(w), p95(s))}")
        if d:
            print(f"         split: direct/stock (host, sandbox, firewall, settings) throughput {ratio(tput(d), tput(s))}, "
                  f"p95 {ratio(p95(d), p95(s))}; monolith/direct (proxy and TLS) throughput {ratio(tput(m), tput(d))}, "
                  f"p95 {ratio(p95(m), p95(d))}")
    print()
    print(f"Growth with N, relative to N={sizes[0]} (throughput, p95 latency, Synapse memory, server CPU):")
    for setup in SETUPS:
        base = by.get((setup, sizes[0]))
        if not base:
            continue
        cells = []
        for n in sizes[1:]:
            r = by.get((setup, n))
            if r:
                cells.append(f"N={n}: x{ratio(r['delivered_per_s'], base['delivered_per_s'])} "
                             f"x{ratio(lat(r, 95), lat(base, 95))} "
                             f"x{ratio(synapse_pss(r), synapse_pss(base))} x{ratio(r['load']['cores'], base['load']['cores'])}")
        print(f"  {setup:<9} " + "; ".join(cells))
    print()
    print("Costs (server side, all processes of the set-up; the capacity model of docs/capacity.md):")
    for setup in SETUPS:
        mine = [by[(setup, n)] for n in sizes if (setup, n) in by]
        if not mine:
            continue
        per_run = [costs(r) for r in mine]
        memory = slope([(r["users"], synapse_pss(r)) for r in mine])

        def mean(key):
            values = [c[key] for c in per_run if c[key] is not None]
            return sum(values) / len(values) if values else None
        idle, message, delivery = mean("idle_cpu_per_user_s"), mean("cpu_per_message_s"), mean("cpu_per_delivery_s")
        print(f"  {setup:<9} idle {idle * 1000:.2f} ms CPU per user per s; "
              f"{message * 1000:.1f} ms CPU per message sent; {delivery * 1000:.1f} ms per delivery; "
              + (f"{memory * 1024:.0f} KiB Synapse memory per user" if memory is not None else "memory slope: one N only"))
    print()
    print("CPU-seconds per process class during the load phase, largest N:")
    for setup in SETUPS:
        r = by.get((setup, sizes[-1]))
        if r:
            parts = sorted(r["load"]["processes"].items(), key=lambda item: -item[1]["cpu_s"])
            print(f"  {setup:<9} " + ", ".join(f"{name} {p['cpu_s']:.0f} s/{p['pss_mib']:.0f} MiB" for name, p in parts)
                  + f"; load generator {r['generator_cpu_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
