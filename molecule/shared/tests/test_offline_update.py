"""A newer offline bundle reaches the deployed hosts (docs/offline.md, "Update").

Enabled with the offline checks (MATRIX_OFFLINE_TEST=1, molecule/default), after every other
check (conftest.py: LAST). The newer bundle is built here as a site's build machine builds it
(scripts/bundle.sh, same commit, same key), with one Debian package newer than the deployed one:
`lynis` (installed on every host by the hardening role, no service), rebuilt with a higher
version, stands for the security update that a later build would take from the mirror. Then, as
an operator does:
1. the controller is set up from it with no network (scripts/offline-setup.sh, unshare --net);
2. playbooks/offline-bundle.yml gives it to every host; a second run changes nothing;
3. each host's unattended upgrade (what apt-daily-upgrade.service runs) installs the newer
   package from it, with no network; the previous bundle stays beside it (offline_bundle_keep).
The times go to offline-update.json (printed at the end of the verify output).
"""
import json
import os
import pathlib
import subprocess
import tarfile
import time

import pytest
import yaml

from conftest import EPHEMERAL, REPO, hosts_of, journal, recap, run_playbook, server

pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_OFFLINE_TEST") != "1",
                                reason="offline checks not enabled for this scenario (MATRIX_OFFLINE_TEST=1)")

PACKAGE = "lynis"
HOSTS = hosts_of("matrix")
SERVICES = {"matrix_db": "postgresql@15-main", "matrix_homeserver": "matrix-synapse", "matrix_turn": "coturn",
            "matrix_proxy": "nginx"}


def _step(times, name, argv, **kwargs):
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    times[name] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, f"{name}: {' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def update(tmp_path_factory):
    """Build the newer bundle, set the controller up from it, publish it twice: its facts."""
    settings = yaml.safe_load((EPHEMERAL / "bundle" / "offline-bundle.yml").read_text())
    deployed, key = settings["matrix_offline_bundle"], settings["matrix_offline_bundle_key"]
    manifest = json.loads(pathlib.Path(deployed, "MANIFEST.json").read_text())
    work = tmp_path_factory.mktemp("offline-update")
    times = {}

    # The deployed package, rebuilt with a higher version.
    with tarfile.open(os.path.join(deployed, "apt.tar")) as archive:
        member = next(m for m in archive.getmembers() if os.path.basename(m.name).startswith(f"{PACKAGE}_"))
        archive.extract(member, work)  # the verified bundle (Python 3.11.2 has no extraction filter)
    tree, debs = work / "tree", work / "debs"
    debs.mkdir()
    _step(times, "repack", ["dpkg-deb", "--raw-extract", str(work / member.name), str(tree)])
    version = manifest["debian"]["packages"][PACKAGE] + "+matrixupdate1"
    control = (tree / "DEBIAN" / "control").read_text()
    (tree / "DEBIAN" / "control").write_text(
        "".join(f"Version: {version}\n" if line.startswith("Version: ") else line + "\n" for line in control.splitlines()))
    _step(times, "repack", ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(debs / f"{PACKAGE}.deb")])

    element = manifest["element_web"]
    fixture = REPO / ".cache" / "fixtures" / f"element-v{element['version']}-fixture.tar.gz"
    built = _step(times, "build", [REPO / "scripts" / "bundle.sh", "--out", work / "dist", "--element-tarball", fixture,
                                   "--element-checksum", element["checksum"], "--extra-debs", debs])
    archive = built.stdout.strip().splitlines()[-1]
    name = os.path.basename(archive)[: -len(".tar")]
    newer = EPHEMERAL / "bundle" / name
    _step(times, "offline-setup", ["unshare", "--net", REPO / "scripts" / "offline-setup.sh", archive, "--key", key,
                                   "--dest", newer])
    extra = ["-e", json.dumps({"matrix_offline_bundle": str(newer), "matrix_offline_bundle_key": key})]
    runs = []
    for run in ("publish", "publish-again"):
        started = time.monotonic()
        runs.append(run_playbook("offline-bundle.yml", *extra))
        times[run] = round(time.monotonic() - started, 1)
    upgrades = {}
    for host in HOSTS:
        started = time.monotonic()
        upgrades[host] = server(host).run("timeout 900 unattended-upgrade -v")
        times[f"unattended-upgrade {host}"] = round(time.monotonic() - started, 1)
    (EPHEMERAL / "offline-update.json").write_text(json.dumps(times))
    return {"deployed": os.path.basename(deployed), "newer": name, "version": version, "runs": runs,
            "upgrades": upgrades}


def test_the_newer_bundle_is_another_bundle(update):
    assert update["newer"] != update["deployed"], update
    assert update["newer"].rsplit("-", 1)[0] == update["deployed"].rsplit("-", 1)[0], "same commit, another digest"


def test_the_playbook_publishes_it_then_changes_nothing(update):
    first, again = update["runs"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    for host in HOSTS:
        assert recap(first.stdout)[host]["changed"] > 0, first.stdout[-3000:]
        assert recap(again.stdout)[host]["changed"] == 0, again.stdout[-3000:]


@pytest.mark.parametrize("name", HOSTS)
def test_apt_reads_the_newer_bundle_and_the_previous_one_is_kept(update, name):
    host = server(name)
    uris = host.check_output("apt-get indextargets --format '$(URI)'").split()
    assert uris and all(u.startswith(f"file:/var/lib/matrix-bundle/{update['newer']}/apt/") for u in uris), uris
    kept = host.check_output("ls /var/lib/matrix-bundle").split()
    assert sorted(kept) == sorted([update["deployed"], update["newer"]]), kept


@pytest.mark.parametrize("name", HOSTS)
def test_the_unattended_upgrade_installs_the_update_from_the_bundle(update, name):
    host = server(name)
    result = update["upgrades"][name]
    assert result.rc == 0, (result.stdout + result.stderr)[-3000:]
    installed = host.check_output("dpkg-query -W -f '${Version}' %s", PACKAGE)
    assert installed == update["version"], (installed, (result.stdout + result.stderr)[-3000:])
    log = host.check_output("cat /var/log/unattended-upgrades/unattended-upgrades.log")
    assert PACKAGE in log.split("Packages that will be upgraded: ")[-1].splitlines()[0].split(), log[-2000:]


@pytest.mark.parametrize("name", HOSTS)
def test_the_services_still_run(update, name):
    host = server(name)
    for group, unit in sorted(SERVICES.items()):
        if name in hosts_of(group):
            assert host.service(unit).is_running, journal(name, unit)
