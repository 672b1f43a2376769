"""Synapse's worker layout, computed in one place from the inventory.

    matrix_synapse_worker_layout(specs, homeservers, http_base, replication_base, main_replication_port)
        -> layout

specs:        {homeserver host: its matrix_synapse_workers}: a preset name ("none", "small",
              "large") or a list of {name, duties}
homeservers:  the hosts of matrix_homeserver, in inventory order; the first runs the main
              process, and keeps the media store and the single duties of the presets
http_base:    the first worker HTTP port on each host (the k-th worker of a host: base + k - 1)
replication_base: the same for the stream writers' replication listeners
main_replication_port: the main process's replication listener (with workers only)

The layout (the same on every host; group_vars/all/workers.yml):
  workers        [{name, host, unit, duties, app, http_port, routed, resources, replication_port}]
                 routed: the proxy sends requests to it (otherwise its listener is /health only,
                 on loopback)
  errors         what is wrong with the specs, one sentence each (preflight shows them)
  stream_writers {stream: [worker names]} for the streams given to workers
  pools          {pool: [[host, port], ...]}: the proxy's upstreams per endpoint class
  federation_sender_instances, pusher_instances: [names]
  background_tasks_on, user_directory_on: a name or ""
  media_instances: [names]
  by_host        {host: [its workers]}
  ports          {host: {http: [the routed workers' HTTP ports], replication: [replication ports,
                 the main process's included]}}: what each host opens (services.yml)

    matrix_synapse_pool_upstreams(pools, address_of) -> {pool: ["address:port", ...]}

address_of: {host: its address as the proxy reaches it} (matrix_topology's view).
"""
from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# Streams that take exactly one writer, and those that may be sharded ([D] Synapse's workers.md).
SINGLE_WRITER_STREAMS = ("typing", "to_device", "account_data", "presence", "push_rules")
SHARDED_STREAMS = ("events", "receipts", "device_lists")
STREAMS = SHARDED_STREAMS + SINGLE_WRITER_STREAMS
# Duties that route client or federation requests to the worker (its pool in the proxy).
POOLS = ("sync", "initial_sync", "client", "federation", "media")
# Streams whose endpoints the proxy sends to their writer.
ROUTED_STREAMS = ("typing", "to_device", "account_data", "receipts", "presence", "push_rules", "device_lists")
# Background duties: no request of their own.
BACKGROUND = ("federation_sender", "pusher", "background", "user_directory")
SINGLE_DUTIES = ("background", "user_directory") + SINGLE_WRITER_STREAMS
DUTIES = POOLS + STREAMS + BACKGROUND

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_ALL_STREAMS = list(STREAMS)
_SINGLES = ["background", "pusher", "federation_sender", "user_directory"]
# The presets, for the main host (which also takes the single duties) and for the others.
PRESETS = {
    "none": {"main": [], "other": []},
    "small": {
        "main": [
            ("writer", _ALL_STREAMS),
            ("background", _SINGLES),
            ("media", ["media"]),
            ("sync", ["sync", "initial_sync"]),
            ("client", ["client", "federation"]),
        ],
        "other": [
            ("sync", ["sync", "initial_sync"]),
            ("client", ["client", "federation"]),
        ],
    },
    "large": {
        "main": [
            ("writer", [s for s in STREAMS if s != "events"]),
            ("events", ["events"]),
            ("events", ["events"]),
            ("background", ["background", "user_directory"]),
            ("pusher", ["pusher"]),
            ("federation_sender", ["federation_sender"]),
            ("media", ["media"]),
            ("initial_sync", ["initial_sync"]),
            ("sync", ["sync"]),
            ("client", ["client"]),
            ("federation", ["federation"]),
        ],
        "other": [
            ("initial_sync", ["initial_sync"]),
            ("sync", ["sync"]),
            ("sync", ["sync"]),
            ("client", ["client"]),
            ("client", ["client"]),
            ("federation", ["federation"]),
        ],
    },
}


def _expand(spec, host, is_main, counters, errors):
    """The host's workers as [(name, duties)], preset names numbered across the homeserver."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            errors.append(f"{host}: matrix_synapse_workers is {spec!r}: use none, small, large or a list of workers")
            return []
        items = []
        for prefix, duties in PRESETS[spec]["main" if is_main else "other"]:
            counters[prefix] = counters.get(prefix, 0) + 1
            items.append((f"{prefix}{counters[prefix]}", list(duties)))
        return items
    if not isinstance(spec, (list, tuple)):
        errors.append(f"{host}: matrix_synapse_workers must be a preset name or a list, not {type(spec).__name__}")
        return []
    items = []
    for index, worker in enumerate(spec):
        if not isinstance(worker, dict) or set(worker) - {"name", "duties"}:
            errors.append(f"{host}: worker {index + 1} must be {{name, duties}}, found {worker!r}")
            continue
        name, duties = worker.get("name"), worker.get("duties")
        if not isinstance(name, str) or not NAME.match(name):
            errors.append(f"{host}: worker name {name!r} must match {NAME.pattern}")
            continue
        if not isinstance(duties, (list, tuple)) or not duties:
            errors.append(f"{host}: worker {name} needs a non-empty list of duties")
            continue
        unknown = [d for d in duties if d not in DUTIES]
        if unknown:
            errors.append(f"{host}: worker {name} has unknown duties {unknown}; known: {', '.join(DUTIES)}")
            continue
        items.append((name, list(dict.fromkeys(duties))))
    return items


def matrix_synapse_worker_layout(specs, homeservers, http_base, replication_base, main_replication_port):
    try:
        http_base, replication_base = int(http_base), int(replication_base)
        main_replication_port = int(main_replication_port)
    except (TypeError, ValueError) as error:
        raise AnsibleFilterError(f"worker port bases must be integers: {error}") from error
    errors, workers, counters = [], [], {}
    main = homeservers[0] if homeservers else None
    for host in homeservers:
        items = _expand(specs.get(host, "none"), host, host == main, counters, errors)
        if host != main and not items:
            errors.append(
                f"{host}: a homeserver host other than the first ({main}, which runs the main process) "
                "runs workers only: give it matrix_synapse_workers (small, large or a list)")
        for index, (name, duties) in enumerate(items):
            routed = any(d in POOLS or d in ROUTED_STREAMS for d in duties)
            writes = any(d in STREAMS for d in duties)
            resources = []
            if any(d in ("sync", "initial_sync", "client") or d in ROUTED_STREAMS for d in duties):
                resources.append("client")
            if "federation" in duties:
                resources.append("federation")
            if "media" in duties:
                resources.append("media")
            workers.append({
                "name": name,
                "host": host,
                "unit": f"matrix-synapse-worker@{name}.service",
                "duties": duties,
                "app": "synapse.app.media_repository" if "media" in duties else "synapse.app.generic_worker",
                "http_port": http_base + index,
                "routed": routed,
                "resources": resources or ["health"],
                "replication_port": replication_base + index if writes else None,
            })
    seen = {}
    for worker in workers:
        if worker["name"] in seen or worker["name"] == "main":
            errors.append(f"worker name {worker['name']} is used twice ({seen.get(worker['name'], 'reserved')}, {worker['host']})")
        seen[worker["name"]] = worker["host"]

    def having(duty):
        return [w["name"] for w in workers if duty in w["duties"]]

    for duty in SINGLE_DUTIES:
        if len(having(duty)) > 1:
            errors.append(f"{duty} takes one worker in the whole homeserver, found {', '.join(having(duty))}")
    media_hosts = {w["host"] for w in workers if "media" in w["duties"]}
    if media_hosts - {main}:
        errors.append(f"media workers run on {main}, the host of the media store (found on {', '.join(sorted(media_hosts - {main}))})")
    pools = {}
    for duty in POOLS + ROUTED_STREAMS:
        members = [[w["host"], w["http_port"]] for w in workers if duty in w["duties"]]
        if members:
            pools[duty] = members
    ports = {
        host: {
            "http": [w["http_port"] for w in workers if w["host"] == host and w["routed"]],
            "replication": ([main_replication_port] if workers and host == main else [])
            + [w["replication_port"] for w in workers if w["host"] == host and w["replication_port"]],
        }
        for host in homeservers
    }
    return {
        "ports": ports,
        "by_host": {host: [w for w in workers if w["host"] == host] for host in homeservers},
        "workers": workers,
        "errors": errors,
        "stream_writers": {s: having(s) for s in STREAMS if having(s)},
        "pools": pools,
        "federation_sender_instances": having("federation_sender"),
        "pusher_instances": having("pusher"),
        "background_tasks_on": (having("background") or [""])[0],
        "user_directory_on": (having("user_directory") or [""])[0],
        "media_instances": having("media"),
    }


def matrix_synapse_pool_upstreams(pools, address_of):
    upstreams = {}
    for pool, members in (pools or {}).items():
        missing = sorted({host for host, _ in members if host not in address_of})
        if missing:
            raise AnsibleFilterError(f"pool {pool}: the proxy has no address for {', '.join(missing)}")
        upstreams[pool] = [
            (f"[{address_of[host]}]" if ":" in address_of[host] else address_of[host]) + f":{port}"
            for host, port in members
        ]
    return upstreams


class FilterModule:
    def filters(self):
        return {
            "matrix_synapse_worker_layout": matrix_synapse_worker_layout,
            "matrix_synapse_pool_upstreams": matrix_synapse_pool_upstreams,
        }
