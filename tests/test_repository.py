"""Repository-level promises: what the README and requirements files claim holds."""
import json
import pathlib
import re

import yaml

from conftest import REPO, run


def test_declared_collections_are_the_installed_ones():
    declared = {c["name"]: c["version"] for c in yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]}
    listed = json.loads(run(["ansible-galaxy", "collection", "list", "--format", "json"]).stdout)
    installed = {}
    for collections in listed.values():
        installed.update({name: info["version"] for name, info in collections.items()})
    assert {name: installed.get(name) for name in declared} == declared


def test_role_readmes_match_their_argument_specs():
    result = run(["python", "scripts/role-docs.py", "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_playbook_folder_sees_the_shared_group_vars():
    """Ansible loads group_vars beside the playbook that is running: each folder
    holding playbooks links to the top-level group_vars/."""
    folders = {p.parent for p in (REPO / "playbooks").rglob("*.yml") if p.parent.name != "group_vars"}
    folders = {f for f in folders if "group_vars" not in f.parts}
    # playbooks/vars holds data (the matrix_* settings' spec) and playbooks/tasks task files
    # included by the playbooks, not playbooks.
    folders.discard(REPO / "playbooks" / "vars")
    folders.discard(REPO / "playbooks" / "tasks")
    for folder in folders:
        link = folder / "group_vars"
        assert link.is_symlink() and link.resolve() == (REPO / "group_vars").resolve(), folder


def test_shared_wiring_loads_for_the_staging_inventory():
    result = run(["ansible-inventory", "-i", "inventories/staging", "--playbook-dir", "playbooks",
                  "--host", "staging-homeserver"])
    host = json.loads(result.stdout)
    # From the inventory (group_vars/matrix) and from the shared wiring (group_vars/all).
    assert host["matrix_server_name"] == "example.test"
    assert host["synapse_server_name"] == "{{ matrix_server_name }}"


def test_every_role_has_specs_preflight_and_docs():
    for role in sorted(p for p in (REPO / "roles").iterdir() if p.is_dir()):
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        # Other entry points (tasks_from) may exist, e.g. hardening's read-only "audit".
        assert {"main", "preflight"} <= set(specs), role.name
        assert specs["main"]["options"] == specs["preflight"]["options"], role.name
        if "audit" in specs:
            assert specs["audit"]["options"] == specs["main"]["options"], role.name
        assert (role / "tasks" / "preflight.yml").is_file(), role.name
        assert yaml.safe_load((role / "meta" / "main.yml").read_text())["dependencies"] == [], role.name
        for option in specs["main"]["options"]:
            assert option.startswith(role.name + "_"), f"{role.name}: {option} is not prefixed"
        page = role.name.replace("_", "-") + ".md"
        assert (REPO / "docs" / page).is_file(), page


def test_every_synapse_lock_pins_and_hashes_every_package():
    """roles/synapse/files/requirements: the role's default release and the drill's older one are
    locked; every requirement is NAME==VERSION with at least one sha256 (pip --require-hashes)."""
    locks = REPO / "roles" / "synapse" / "files" / "requirements"
    found = {p.name for p in locks.glob("synapse-*.txt")}
    assert "synapse-1.160.0.txt" in found, found
    default = yaml.safe_load((REPO / "roles/synapse/defaults/main.yml").read_text())["synapse_version"]
    assert f"synapse-{default}.txt" in found, found
    for lock in sorted(locks.glob("synapse-*.txt")):
        version = lock.stem.removeprefix("synapse-")
        entries = re.split(r"\n(?=[^\s#])", lock.read_text().split("\n", 2)[2].strip())
        names = []
        for entry in entries:
            head, *hashes = [part.strip() for part in entry.split("\\\n")]
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+", head), f"{lock.name}: {head}"
            assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), f"{lock.name}: {head}"
            names.append(head.split("==")[0])
        assert f"matrix-synapse=={version}" in [e.split(" ")[0] for e in entries], lock.name
        assert "psycopg2" not in names, f"{lock.name}: psycopg2 comes from Debian (python3-psycopg2)"


def _apt_tasks(node):
    """Every ansible.builtin.apt task in a task list, blocks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        if "ansible.builtin.apt" in task:
            yield task
        for key in ("block", "rescue", "always"):
            yield from _apt_tasks(task.get(key))


def test_every_package_a_role_installs_comes_from_its_apt_package_list():
    # One place per role (vars/main.yml: __<role>_apt_packages): what the role installs is what
    # the offline bundle carries and what its preflight checks for (scripts/bundle.sh).
    # A task may also install a list the role's vars/main.yml builds from those purposes only
    # (hardening: one apt transaction for the controls that are not waived).
    checked = 0
    for tasks_file in sorted(REPO.glob("roles/*/tasks/*.yml")):
        role = tasks_file.parts[-3]
        role_vars = yaml.safe_load((REPO / "roles" / role / "vars" / "main.yml").read_text())
        for task in _apt_tasks(yaml.safe_load(tasks_file.read_text())):
            args = task["ansible.builtin.apt"] or {}
            if args.get("state", "present") == "absent" or "name" not in args:
                continue
            names = args["name"]
            derived = re.fullmatch(r"\{\{ (__%s_packages_\w+) \}\}" % role, names) if isinstance(names, str) else None
            if derived:
                definition = role_vars.get(derived.group(1))
                assert isinstance(definition, str) and "__%s_apt_packages." % role in definition and not re.search(
                    r"\[\s*['\"]?[a-z0-9][a-z0-9.+-]*['\"]?\s*\]", definition
                ), f"{tasks_file}: {task.get('name')}: {derived.group(1)} must be built from __{role}_apt_packages only"
            else:
                assert isinstance(names, str) and re.fullmatch(
                    r"\{\{ __%s_apt_packages\.\w+( \+ __%s_apt_packages\.\w+)* \}\}" % (role, role), names
                ), f"{tasks_file}: {task.get('name')}: install from __{role}_apt_packages, not {names!r}"
            checked += 1
    assert checked >= 12  # the walk found the install tasks of every role (13 in session 10)
