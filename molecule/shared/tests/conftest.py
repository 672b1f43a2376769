"""Shared fixtures of the full-stack scenarios (default, multi-host, vm, staging).

Hosts are taken from Molecule's inventory by function group, so the same
checks serve one host or four. The controller (where pytest runs) is the
"outside": it is none of the server hosts and reaches them over the Docker
network, as a client or an attacker on the network would.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import testinfra
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
EPHEMERAL = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
CREDENTIALS = EPHEMERAL / "credentials"
REPO = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
# The inventory folder, not Molecule's generated file alone: the file puts each platform in its
# function groups, the scenario's linked hosts.yml beside it makes them children of `matrix`.
# With the file alone, hosts_of("matrix") was empty and every test parametrized by it was
# skipped ("NOTSET") without a word.
RUNNER = AnsibleRunner(str(pathlib.Path(INVENTORY).parent))

# Names of the staging inventory (inventories/staging/group_vars/matrix/main.yml).
SERVER_NAME = "example.test"
HOMESERVER_FQDN = "matrix.example.test"
ELEMENT_FQDN = "element.example.test"
TURN_FQDN = "turn.example.test"

sys.path.insert(0, str(REPO / "tests" / "e2e"))


def hosts_of(group):
    return RUNNER.get_hosts(group)


assert hosts_of("matrix"), f"no host in the matrix group of {pathlib.Path(INVENTORY).parent}"


def server(name):
    """The host as root: a host reached over ssh as an unprivileged admin account (the VM
    scenarios) runs the checks through sudo, as the playbooks do with become."""
    spec = f"ansible://{name}?ansible_inventory={INVENTORY}"
    if RUNNER.get_variables(name).get("ansible_user", "root") != "root":
        spec += "&sudo=true"
    return testinfra.get_host(spec)


def journal(name, unit, lines=40):
    """The unit's last journal lines on the host (for failure messages)."""
    return server(name).run("journalctl -u %s -n %s --no-pager", unit, str(lines)).stdout


def run_playbook(playbook, *extra, check=False):
    """ansible-playbook playbooks/<playbook> (or the playbook at that absolute path) on this
    scenario's hosts, with Molecule's settings (its ansible.cfg and inventory), as an operator
    runs it: the finished process."""
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", PY_COLORS="0")
    config = EPHEMERAL / "ansible.cfg"
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    argv = ["ansible-playbook", "-i", str(pathlib.Path(INVENTORY).parent), str(REPO / "playbooks" / playbook), *extra]
    if check:
        argv.append("--check")
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)


def recreate_containers(*names):
    """Fresh hosts in place of the named containers: they are removed (with everything on their
    disks) and created again from the scenario's platforms by molecule/shared/create.yml and
    prepare.yml, as `molecule create` does (same names and networks). The finished processes."""
    names = list(dict.fromkeys(names))  # one host may hold several tiers
    subprocess.run(["docker", "rm", "--force", "--volumes", *names], check=True, capture_output=True, text=True)
    scenario = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "molecule.yml"
    platforms = [p for p in yaml.safe_load(scenario.read_text())["platforms"] if p["name"] in names]
    created = run_playbook(REPO / "molecule" / "shared" / "create.yml", "-e", json.dumps({"molecule_yml": {"platforms": platforms}}))
    if created.returncode != 0:
        return created
    return run_playbook(REPO / "molecule" / "shared" / "prepare.yml", "--limit", ",".join(names))


def recap(output):
    """{host: {ok: n, changed: n, ...}} from the PLAY RECAP."""
    hosts = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match:
            hosts[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
    return hosts


def address_of(name):
    """The host's address on the private network (Docker's, or the VMs' bridge)."""
    return server(name).check_output("hostname -I").split()[0]


def first(group):
    return hosts_of(group)[0]


def _e2e_environment():
    """The MATRIX_E2E_* settings of tests/e2e for this deployment."""
    users = CREDENTIALS / "users"
    return {
        "MATRIX_E2E_PROXY_ADDRESS": address_of(first("matrix_proxy")),
        "MATRIX_E2E_TURN_ADDRESS": address_of(first("matrix_turn")),
        "MATRIX_E2E_SERVER_NAME": SERVER_NAME,
        "MATRIX_E2E_HOMESERVER_FQDN": HOMESERVER_FQDN,
        "MATRIX_E2E_ELEMENT_FQDN": ELEMENT_FQDN,
        "MATRIX_E2E_TURN_FQDN": TURN_FQDN,
        "MATRIX_E2E_CA_FILE": str(CREDENTIALS / "ca" / "ca.crt"),
        "MATRIX_E2E_USER_A": "alice",
        "MATRIX_E2E_PASSWORD_A": (users / "alice").read_text().strip(),
        "MATRIX_E2E_USER_B": "bob",
        "MATRIX_E2E_PASSWORD_B": (users / "bob").read_text().strip(),
    }


def pytest_configure(config):
    os.environ.update(_e2e_environment())


# The drills change the stack: the upgrade drill runs first (every other check then sees the
# upgraded stack), the restore drill and the offline update last (the checks before them see the
# stack as deployed).
FIRST, LAST = ("test_upgrade.py",), ("test_restore.py", "test_offline_update.py")


def pytest_terminal_summary(terminalreporter):
    """The drills' figures at the end of the verify output (the ephemeral directory where they
    are written goes with the scenario's destroy)."""
    for name in ("upgrade-drill.json", "restore-drill.json", "fault-drills.json", "offline-update.json"):
        path = EPHEMERAL / name
        if path.is_file():
            terminalreporter.write_line(f"{name}: {json.dumps(json.loads(path.read_text()))}")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return 0 if name in FIRST else 2 if name in LAST else 1
    items.sort(key=rank)


@pytest.fixture(scope="session")
def credentials():
    return CREDENTIALS
