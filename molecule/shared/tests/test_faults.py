"""Fault drills on the converged stack (docs/operations.md, "Faults"): each fault is made, then
the stack must serve a real client again without any manual step, within a bound; the time it
took is recorded in fault-drills.json (scenario's ephemeral directory).

- `kill -9` of each service's main process (PostgreSQL, Synapse, coturn, nginx);
- PostgreSQL restarted under a running Synapse;
- the homeserver cut from the database for 30 s (its packets dropped): every message whose send
  the client saw acknowledged during the cut is there afterwards;
- a restart of each host (container restart), after which the client checks pass again.

"Serving" is checked as a client: through the proxy, a message sent and read back with a
logged-in account, and for coturn a TURN allocation with the homeserver's credentials.

Opt-in (MATRIX_FAULT_DRILLS=1 in the environment of a multi-host run): the drills take minutes
that CI's hour does not have.
"""
import asyncio
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import EPHEMERAL, RUNNER, address_of, first, journal, server

import matrix_e2e as e2e  # noqa: E402 (tests/e2e, put on the path by conftest)
from test_matrix_e2e import _udp_turn_uri, config, http, run, users  # noqa: F401 (the shared client fixtures)

pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_FAULT_DRILLS") != "1",
                                reason="fault drills are opt-in (MATRIX_FAULT_DRILLS=1)")

DB, HOMESERVER, TURN, PROXY = (first(g) for g in ("matrix_db", "matrix_homeserver", "matrix_turn", "matrix_proxy"))
UNITS = {"postgresql@15-main.service": DB, "matrix-synapse.service": HOMESERVER, "coturn.service": TURN,
         "nginx.service": PROXY}
# Seconds a service may take to serve again after each fault.
BOUND = {"kill": 60, "restart": 60, "cut": 90, "reboot": 180}
FIGURES = {}


def record(name, seconds):
    FIGURES[name] = None if seconds is None else round(seconds, 1)
    (EPHEMERAL / "fault-drills.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


def wait_until(check, bound):
    """Seconds until check() is true, polling every second; None if the bound passed."""
    start = time.monotonic()
    while time.monotonic() - start < bound:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - a service coming back fails in many ways
            pass
        time.sleep(1)
    return None


@pytest.fixture(scope="module")
def client(config, users, run, http):  # noqa: F811 (fixtures)
    """(send, read, turn, post): a message sent through the proxy (its event ID, or None when not
    acknowledged), the text of an event, a TURN allocation (True when granted), and the
    coroutine of one send (for sends that overlap a fault)."""
    alice, _ = users.require()
    token = alice.access_token
    room = run(e2e.create_room(http, config, token, "fault drills"))

    async def post(text):
        answer = await e2e.send_text(http, config, token, room, text)
        return answer.json()["event_id"] if answer.status == 200 else None

    def send(text, timeout=10):
        return run(post(text), timeout=timeout)

    def read(event_id):
        answer = run(e2e.get_event(http, config, token, room, event_id), timeout=10)
        return answer.json()["content"]["body"] if answer.status == 200 else None

    def turn():
        credentials = run(e2e.get_turn_server(http, config, token), timeout=10)
        uri = _udp_turn_uri(config, credentials)

        async def _allocate():
            async with e2e.TurnProbe((config.turn_address, uri.port), credentials["username"],
                                     credentials["password"]) as probe:
                return await probe.allocate()
        return run(_allocate(), timeout=10).relayed_address is not None

    return send, read, turn, post


def serving(client):
    send, read = client[:2]
    text = e2e.random_text("fault-drill")
    event_id = send(text)
    return event_id is not None and read(event_id) == text


def main_pid(host, unit):
    return int(host.check_output("systemctl show --property=MainPID --value %s", unit))


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_a_killed_service_comes_back_by_itself(client, unit):
    host = server(UNITS[unit])
    assert serving(client), "the stack does not serve before the fault"
    pid = main_pid(host, unit)
    assert pid > 0
    host.check_output("kill -9 %s", str(pid))
    check = client[2] if unit == "coturn.service" else (lambda: serving(client))
    seconds = wait_until(lambda: host.service(unit).is_running and main_pid(host, unit) not in (0, pid) and check(),
                         BOUND["kill"])
    record(f"kill -9 {unit}", seconds)
    assert seconds is not None, f"{unit} did not serve again within {BOUND['kill']} s:\n{journal(UNITS[unit], unit)}"


def test_synapse_recovers_when_postgresql_restarts_under_it(client):
    server(DB).check_output("systemctl restart postgresql@15-main.service")
    seconds = wait_until(lambda: serving(client), BOUND["restart"])
    record("PostgreSQL restarted under Synapse", seconds)
    assert seconds is not None, journal(HOMESERVER, "matrix-synapse")


def test_a_30_s_cut_from_the_database_loses_no_acknowledged_message(client, run):  # noqa: F811
    """Sends start every 5 s during the cut and may wait up to 90 s for their answer: each one
    the client sees acknowledged, and the one acknowledged just before the cut, must be there."""
    send, read, _, post = client
    homeserver = server(HOMESERVER)
    before = e2e.random_text("before-cut")
    acknowledged = {send(before): before}
    assert None not in acknowledged, "no send was acknowledged before the cut"
    rules = ("add table inet fault_drill; "
             "add chain inet fault_drill out { type filter hook output priority -10; policy accept; }; "
             f"add rule inet fault_drill out ip daddr {address_of(DB)} tcp dport 5432 drop")
    homeserver.check_output("nft %s", rules)
    lift = threading.Timer(30, lambda: homeserver.run("nft delete table inet fault_drill"))
    lift.start()

    async def sends_during_the_cut():
        async def one(delay):
            await asyncio.sleep(delay)
            text = e2e.random_text("during-cut")
            try:
                return text, await asyncio.wait_for(post(text), 90)
            except Exception:  # noqa: BLE001 - an error or a timeout: not acknowledged
                return text, None
        return await asyncio.gather(*(one(delay) for delay in range(0, 30, 5)))

    try:
        during = run(sends_during_the_cut(), timeout=150)
    finally:
        lift.join()
        homeserver.run("nft delete table inet fault_drill")
    acknowledged.update({event_id: text for text, event_id in during if event_id})
    seconds = wait_until(lambda: serving(client), BOUND["cut"])
    record("30 s cut from the database, back after the cut", seconds)
    assert seconds is not None, journal(HOMESERVER, "matrix-synapse")
    lost = {event_id: text for event_id, text in acknowledged.items() if read(event_id) != text}
    FIGURES["30 s cut: sends during the cut, acknowledged"] = [len(during), sum(1 for _, e in during if e)]
    record("30 s cut: acknowledged messages lost", len(lost))
    assert not lost, f"acknowledged, then lost: {lost}"


@pytest.mark.parametrize("name", [DB, HOMESERVER, TURN, PROXY])
def test_each_host_restarts_and_the_stack_serves_again(client, name):
    if RUNNER.get_variables(name).get("ansible_connection") not in ("docker", "community.docker.docker"):
        pytest.skip("host restarts are drilled on containers (VMs reboot in test_vm_kernel.py)")
    subprocess.run(["docker", "restart", name], check=True, capture_output=True, timeout=120)
    seconds = wait_until(lambda: serving(client) and client[2](), BOUND["reboot"])
    record(f"restart of {name}", seconds)
    assert seconds is not None, f"the stack did not serve again within {BOUND['reboot']} s after {name} restarted"
