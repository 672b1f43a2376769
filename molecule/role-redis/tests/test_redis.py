"""roles/redis: Redis answers its one account from loopback and from the admitted client, refuses
anyone without the password, refuses the administration commands, is unreachable from any other
address, persists nothing, and runs sandboxed."""
import os
import socket
import time

import pytest
import testinfra
import yaml

SCENARIO = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "molecule.yml")
PASSWORD = yaml.safe_load(open(SCENARIO))["provisioner"]["inventory"]["host_vars"]["role-redis"]["redis_password"]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SERVER = testinfra.get_host(f"ansible://role-redis?ansible_inventory={INVENTORY}")
CLIENT = testinfra.get_host(f"ansible://role-redis-client?ansible_inventory={INVENTORY}")
ADDRESS = SERVER.check_output("hostname -I").split()[0]


def resp(host, address, *commands, password=PASSWORD):
    """The replies to inline commands sent over one connection (bash's /dev/tcp: the client has
    no Redis tools), AUTH first unless password is None."""
    lines = ([f"AUTH {password}"] if password is not None else []) + list(commands) + ["QUIT"]
    script = "exec 3<>/dev/tcp/%s/6379; printf '%s\\r\\n' >&3; timeout 5 cat <&3" % (address, "\\r\\n".join(lines))
    return host.run("bash -c %s", script).stdout


def test_the_account_is_answered_from_loopback_and_from_the_admitted_client():
    assert "+PONG" in resp(SERVER, "127.0.0.1", "PING")
    assert "+PONG" in resp(CLIENT, ADDRESS, "PING")
    # Publish/subscribe, what Synapse uses: a PUBLISH is accepted (no subscriber: 0).
    assert ":0" in resp(CLIENT, ADDRESS, "PUBLISH channel message")


def test_no_password_or_a_wrong_one_is_refused():
    assert "-NOAUTH" in resp(CLIENT, ADDRESS, "PING", password=None)
    assert "-WRONGPASS" in resp(CLIENT, ADDRESS, "PING", password="not-the-password")


@pytest.mark.parametrize("command, refusal", [
    ("CONFIG GET bind", "-NOPERM"), ("FLUSHALL", "-NOPERM"), ("KEYS *", "-NOPERM"), ("SHUTDOWN", "-NOPERM"),
    ("ACL LIST", "-NOPERM"),
    # Refused before the account's rights are even read (enable-debug-command no).
    ("DEBUG SLEEP 0", "-ERR DEBUG command not allowed"),
])
def test_the_administration_commands_are_refused(command, refusal):
    assert resp(SERVER, "127.0.0.1", command).split("\r\n")[1].startswith(refusal)
    assert SERVER.service("redis-server").is_running


def test_nothing_else_reaches_it():
    """The controller is on the same network but not admitted: the unit's IP filter drops it."""
    with pytest.raises(OSError):
        socket.create_connection((ADDRESS, 6379), timeout=3).recv(1)


def test_it_listens_on_the_given_addresses_only():
    listening = SERVER.check_output("ss -Hltn 'sport = :6379'")
    addresses = sorted(line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines())
    assert addresses == sorted(["127.0.0.1", ADDRESS])


def test_the_password_is_stored_hashed_and_nothing_is_persisted():
    config = SERVER.file("/etc/redis/redis.conf")
    assert config.mode == 0o640 and config.group == "redis"
    assert PASSWORD not in config.content_string
    assert ":1" in resp(SERVER, "127.0.0.1", "SET key value", "EXISTS key")
    SERVER.check_output("systemctl restart redis-server")
    for _ in range(20):  # bounded: 10 s at most for it to answer again
        if "+PONG" in resp(SERVER, "127.0.0.1", "PING"):
            break
        time.sleep(0.5)
    assert ":0" in resp(SERVER, "127.0.0.1", "EXISTS key")
    assert not SERVER.file("/var/lib/redis/dump.rdb").exists


def test_the_service_is_sandboxed():
    exposure = SERVER.check_output("systemd-analyze security redis-server.service --no-pager | tail -n 1")
    assert float(exposure.split("exposure level for redis-server.service: ")[1].split()[0]) <= 2.0, exposure
    pid = SERVER.check_output("systemctl show redis-server -p MainPID --value")
    status = SERVER.file(f"/proc/{pid}/status").content_string
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
