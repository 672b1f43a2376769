"""Load generator of scripts/bench-load.sh: N real Matrix clients (matrix-nio, E2EE) in
end-to-end encrypted rooms, each sending at a set rate while it syncs.

One run against one deployment:
  1. set-up: each account (registered beforehand by register_users.py) restores its device,
     uploads its device keys; rooms of --room-size members are created (encrypted from the
     start, public join rule: no invites, whose rate limits are minutes) and joined;
  2. idle: every client long-polls /sync for --idle seconds, nobody sends (what a connected,
     silent user costs the server);
  3. warm-up: each client sends one encrypted message (the Megolm session is shared with the
     room: key queries, one-time key claims, to-device messages), not measured;
  4. load: each client sends --rate messages per second for --duration seconds (a fixed
     schedule with a random phase, so open-loop: a slow server does not slow the offered load),
     while every client syncs; each message carries its send time, and each recipient that
     decrypts it records the send-to-receive latency; then at most --grace seconds for the
     last deliveries.
Everything is bounded: a fixed number of messages per client, every wait has a deadline.

The server side's CPU and memory are read from the test hosts (each process's CPU time and
proportional memory from /proc, through `docker exec`; the container's CPU from its cgroup) at the start and the end of the idle and load phases. Prints one
JSON object (the run's figures) on stdout; progress on stderr.

The HTTP client (staging CA, the proxy's address for the public names) is tests/e2e's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from nio import (
    AsyncClient,
    EncryptionError,
    AsyncClientConfig,
    JoinResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import matrix_e2e as e2e  # noqa: E402

MEGOLM = "m.megolm.v1.aes-sha2"
# Long-poll timeout of the clients' /sync (Element uses 30 s; shorter here, so that the idle
# phase and the end of a run do not wait on it).
SYNC_TIMEOUT_MS = 10_000
WORKER_CONFIG = re.compile(r"workers/([a-z0-9_]+)\.yaml")


def log(message: str) -> None:
    print(f"[matrix_load] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --------------------------------------------------------------------------------------------
# Server-side CPU and memory (the test hosts, through docker exec)
# --------------------------------------------------------------------------------------------

def process_class(args: str) -> str | None:
    """The project-level name of a server process, from its command line."""
    if "synapse.app." in args:
        worker = WORKER_CONFIG.search(args)
        return f"synapse:{worker.group(1)}" if worker else "synapse:main"
    if args.startswith("postgres") or "/bin/postgres" in args:
        return "postgresql"
    if args.startswith("nginx"):
        return "nginx"
    if args.startswith("/usr/bin/redis-server") or args.startswith("redis-server"):
        return "redis"
    if "turnserver" in args:
        return "coturn"
    return None


def container_cpu_seconds(container_id: str) -> float:
    """The container's CPU time from its cgroup, read on this machine (cgroup v1 or v2)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
               Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat")):
        if v2.exists():
            usage = next(line for line in v2.read_text().splitlines() if line.startswith("usage_usec"))
            return int(usage.split()[1]) / 1e6
    raise RuntimeError(f"no CPU accounting found for container {container_id}")


async def command_output(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}: {err.decode().strip()}")
    return out.decode()


# Run by the container's own python3: every process's command line, CPU time (utime + stime)
# and proportional memory (PSS: PostgreSQL's shared buffers counted once, not per backend).
PROCESS_LISTING = """
import json, os
tick = os.sysconf("SC_CLK_TCK")
out = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        pss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith("Pss:"))
    except (OSError, StopIteration):
        continue
    if args:
        out.append([args, (int(stat[11]) + int(stat[12])) / tick, pss])
print(json.dumps(out))
"""


async def host_sample(container: str) -> dict:
    """{cpu_total_s, processes: {class: {cpu_s, pss_mib}}} of one container, now."""
    container_id = (await command_output("docker", "inspect", "-f", "{{.Id}}", container)).strip()
    listing = json.loads(await command_output("docker", "exec", container, "python3", "-c", PROCESS_LISTING))
    sample = {"cpu_total_s": container_cpu_seconds(container_id), "processes": {}}
    for args, cpu, pss in listing:
        name = process_class(args)
        if name:
            entry = sample["processes"].setdefault(name, {"cpu_s": 0.0, "pss_mib": 0.0})
            entry["cpu_s"] += cpu
            entry["pss_mib"] += pss / 1024
    return sample


async def servers_sample(containers: list[str]) -> dict:
    samples = await asyncio.gather(*(host_sample(c) for c in containers))
    merged = {"cpu_total_s": 0.0, "processes": {}}
    for sample in samples:
        merged["cpu_total_s"] += sample["cpu_total_s"]
        for name, entry in sample["processes"].items():
            total = merged["processes"].setdefault(name, {"cpu_s": 0.0, "pss_mib": 0.0})
            total["cpu_s"] += entry["cpu_s"]
            total["pss_mib"] += entry["pss_mib"]
    return merged


def usage(before: dict, after: dict, seconds: float) -> dict:
    """CPU (seconds and cores) and memory per process class over a phase."""
    processes = {}
    for name, entry in after["processes"].items():
        cpu = entry["cpu_s"] - before["processes"].get(name, {}).get("cpu_s", 0.0)
        processes[name] = {"cpu_s": round(cpu, 1), "pss_mib": round(entry["pss_mib"], 1)}
    cpu_total = after["cpu_total_s"] - before["cpu_total_s"]
    return {"seconds": round(seconds, 1), "cpu_total_s": round(cpu_total, 1),
            "cores": round(cpu_total / seconds, 2) if seconds else None, "processes": processes}


# --------------------------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, options, accounts):
        self.options = options
        self.accounts = accounts
        self.clients: list[AsyncClient] = []
        self.room_of: dict[str, str] = {}
        self.members: dict[str, int] = {}
        self.stop_sync = asyncio.Event()
        self.measuring = False
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.send_latencies: list[float] = []
        self.deliveries_in_window = 0
        self.undecryptable = 0
        self.errors: dict[str, int] = {}
        self.syncs = 0
        self.window = (0.0, 0.0)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def session(self) -> aiohttp.ClientSession:
        ssl_context = e2e.make_ssl_context(self.options.ca) if self.options.ca else False
        resolver = (e2e.StaticResolver({n: self.options.address for n in self.options.names})
                    if self.options.address else None)
        connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context, resolver=resolver, use_dns_cache=False)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    def new_client(self, session, account, store: Path) -> AsyncClient:
        path = store / account["device_id"]
        path.mkdir(parents=True)
        client = AsyncClient(
            self.options.homeserver, user=account["user_id"], device_id=account["device_id"],
            store_path=str(path),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False,
                                     max_limit_exceeded=0, max_timeouts=2, request_timeout=60))
        client.client_session = session
        client.restore_login(account["user_id"], account["device_id"], account["access_token"])
        return client

    async def bounded(self, coroutines, limit=16):
        semaphore = asyncio.Semaphore(limit)

        async def one(coroutine):
            async with semaphore:
                return await coroutine
        return await asyncio.gather(*(one(c) for c in coroutines))

    async def set_up(self, session, store: Path) -> None:
        self.clients = [self.new_client(session, account, store) for account in self.accounts]
        await self.bounded(c.keys_upload() for c in self.clients)
        size = self.options.room_size
        groups = [self.clients[i:i + size] for i in range(0, len(self.clients), size)]

        async def create(group):
            answer = await group[0].room_create(
                preset=RoomPreset.public_chat, name=f"bench {uuid.uuid4().hex[:6]}",
                initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}])
            if not isinstance(answer, RoomCreateResponse):
                raise RuntimeError(f"room creation failed: {answer}")
            return answer.room_id
        rooms = await self.bounded(create(g) for g in groups)

        async def join(client, room_id):
            answer = await client.join(room_id)
            if not isinstance(answer, JoinResponse):
                raise RuntimeError(f"{client.user_id} could not join {room_id}: {answer}")
        await self.bounded(join(c, room) for g, room in zip(groups, rooms) for c in g[1:])
        for group, room in zip(groups, rooms):
            self.members[room] = len(group)
            for client in group:
                self.room_of[client.user_id] = room

        async def first_sync(client):
            answer = await client.sync(timeout=0, full_state=True)
            if not isinstance(answer, SyncResponse):
                raise RuntimeError(f"{client.user_id}: first sync failed: {answer}")
        await self.bounded(first_sync(c) for c in self.clients)

        # The members' device keys now (the sync loop asks only after its first long poll, and
        # room_send does not ask once the member list came with the first sync).
        async def query_keys(client):
            if client.should_query_keys:
                await client.keys_query()
        await self.bounded(query_keys(c) for c in self.clients)
        log(f"set up: {len(self.clients)} clients in {len(rooms)} encrypted rooms of up to {size}")

    async def sync_loop(self, client: AsyncClient, pending: dict) -> None:
        while not self.stop_sync.is_set():
            try:
                answer = await client.sync(timeout=SYNC_TIMEOUT_MS)
            except Exception as exception:  # noqa: BLE001 (a benchmark counts, it does not stop)
                self.error(f"sync {type(exception).__name__}")
                await asyncio.sleep(1)
                continue
            now = time.time()
            if not isinstance(answer, SyncResponse):
                self.error(f"sync {getattr(answer, 'status_code', '') or type(answer).__name__}")
                await asyncio.sleep(1)
                continue
            if self.measuring:
                self.syncs += 1
            # A message whose room key has not come yet (the key travels as a to-device
            # message, which may come in a later sync) waits, as in a real client, and is
            # decrypted when it comes.
            events = [event for room in answer.rooms.join.values() for event in room.timeline.events
                      if event.sender != client.user_id]
            waiting = pending.setdefault(client.user_id, [])
            retried, waiting[:] = list(waiting), []
            for event in retried + events:
                if isinstance(event, MegolmEvent):
                    try:
                        event = client.decrypt_event(event)
                    except EncryptionError:
                        waiting.append(event)
                        continue
                if isinstance(event, RoomMessageText) and event.body.startswith("bench "):
                    _, message_id, sent_at = event.body.split()
                    if message_id in self.sent:
                        self.latencies.append(now - float(sent_at))
                        if self.window[0] <= now <= self.window[1]:
                            self.deliveries_in_window += 1
            try:
                if client.should_query_keys:
                    await client.keys_query()
                await client.send_to_device_messages()
            except Exception as exception:  # noqa: BLE001
                self.error(f"keys {type(exception).__name__}")

    async def send(self, client: AsyncClient, text: str) -> bool:
        started = time.time()
        try:
            answer = await client.room_send(
                self.room_of[client.user_id], "m.room.message", {"msgtype": "m.text", "body": text},
                ignore_unverified_devices=True)
        except Exception as exception:  # noqa: BLE001
            self.error(f"send {type(exception).__name__}")
            return False
        if not isinstance(answer, RoomSendResponse):
            self.error(f"send {getattr(answer, 'status_code', '') or type(answer).__name__}")
            return False
        self.send_latencies.append(time.time() - started)
        return True

    async def sender(self, client: AsyncClient, start: float, count: int, period: float) -> None:
        phase = random.uniform(0, period)
        for k in range(count):
            delay = start + phase + k * period - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = uuid.uuid4().hex
            sent_at = time.time()
            self.sent[message_id] = sent_at
            await self.send(client, f"bench {message_id} {sent_at:.6f}")

    async def run(self) -> dict:
        containers = self.options.containers.split(",")
        with tempfile.TemporaryDirectory(prefix="matrix-load-") as store:
            return await self._run(containers, Path(store))

    async def _run(self, containers: list[str], store: Path) -> dict:
        """run(), with the clients' E2EE stores in a folder removed afterwards."""
        options = self.options
        async with await self.session() as session:
            started = time.monotonic()
            await self.set_up(session, store)
            set_up_s = time.monotonic() - started
            pending: dict[str, list] = {}
            syncing = [asyncio.create_task(self.sync_loop(c, pending)) for c in self.clients]
            try:
                # Idle: connected, syncing, silent.
                await asyncio.sleep(2)
                before, t0 = await servers_sample(containers), time.monotonic()
                await asyncio.sleep(options.idle)
                after, t1 = await servers_sample(containers), time.monotonic()
                idle = usage(before, after, t1 - t0)
                log(f"idle: {idle['cores']} cores for {len(self.clients)} syncing clients")

                # Warm-up: one message each (Megolm sessions shared), not counted.
                # The members of a room one after the other (Olm sessions are set up between each
                # pair once, not from both ends at the same time), the rooms side by side.
                async def warm_up(room_id):
                    results = []
                    for client in self.clients:
                        if self.room_of[client.user_id] == room_id:
                            results.append(await self.send(client, "warm-up"))
                    return results
                ok = [r for results in await self.bounded((warm_up(r) for r in self.members), limit=8) for r in results]
                warm_up_failures = ok.count(False)
                warm_up_errors = dict(self.errors)
                self.errors.clear()
                self.send_latencies.clear()
                await asyncio.sleep(5)

                # Load.
                period = 1 / options.rate
                count = max(1, int(options.duration * options.rate))
                start = time.time() + 1
                self.window = (start, start + options.duration)
                self.measuring = True
                usage_before, t0 = await servers_sample(containers), time.monotonic()
                cpu_before = resource.getrusage(resource.RUSAGE_SELF)
                await asyncio.gather(*(self.sender(c, start, count, period) for c in self.clients))
                expected = sum(self.members[self.room_of[c.user_id]] - 1 for c in self.clients) * count
                deadline = time.time() + options.grace
                while len(self.latencies) < expected and time.time() < deadline:
                    await asyncio.sleep(0.5)
                usage_after, t1 = await servers_sample(containers), time.monotonic()
                cpu_after = resource.getrusage(resource.RUSAGE_SELF)
                self.measuring = False
            finally:
                self.stop_sync.set()
                await asyncio.wait(syncing, timeout=SYNC_TIMEOUT_MS / 1000 + 15)
                for task in syncing:
                    task.cancel()
                for client in self.clients:
                    await client.close()
        self.undecryptable = sum(len(events) for events in pending.values())
        load = usage(usage_before, usage_after, t1 - t0)
        sent = len(self.send_latencies)
        attempted = len(self.clients) * count
        delivered = len(self.latencies)
        return {
            "label": options.label,
            "users": len(self.clients),
            "room_size": options.room_size,
            "rate_per_user": options.rate,
            "duration_s": options.duration,
            "set_up_s": round(set_up_s, 1),
            "warm_up_failures": warm_up_failures,
            "warm_up_errors": warm_up_errors,
            "attempted": attempted,
            "sent": sent,
            "expected_deliveries": expected,
            "delivered": delivered,
            "undecryptable": self.undecryptable,
            "delivered_per_s": round(self.deliveries_in_window / options.duration, 2),
            "sent_per_s": round(sent / options.duration, 2),
            "error_rate": round(1 - (delivered / expected if expected else 0), 4) if expected else None,
            "errors": self.errors,
            "latency_ms": {q: (round(percentile(self.latencies, q) * 1000) if self.latencies else None)
                           for q in (50, 95, 99)},
            "send_ms": {q: (round(percentile(self.send_latencies, q) * 1000) if self.send_latencies else None)
                        for q in (50, 95)},
            "syncs": self.syncs,
            "idle": idle,
            "load": load,
            "generator_cpu_s": round((cpu_after.ru_utime + cpu_after.ru_stime)
                                     - (cpu_before.ru_utime + cpu_before.ru_stime), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--homeserver", required=True, help="client API base URL")
    parser.add_argument("--address", help="address of the public names (the proxy)")
    parser.add_argument("--names", nargs="*", default=[], help="public names served at --address")
    parser.add_argument("--ca", help="CA file (HTTPS)")
    parser.add_argument("--accounts", required=True, help="JSON from register_users.py")
    parser.add_argument("--containers", required=True, help="the deployment's containers, comma-separated")
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.05, help="messages per second per user")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--idle", type=float, default=20)
    parser.add_argument("--grace", type=float, default=20)
    options = parser.parse_args()
    for name, value, low, high in (("--rate", options.rate, 0.001, 1), ("--duration", options.duration, 5, 1800),
                                   ("--idle", options.idle, 1, 600), ("--grace", options.grace, 1, 300),
                                   ("--room-size", options.room_size, 2, 100)):
        if not low <= value <= high:
            parser.error(f"{name} must be between {low} and {high}")
    accounts = json.loads(Path(options.accounts).read_text())
    result = asyncio.run(Bench(options, accounts).run())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
