"""The offline proof: the stack came from the bundle and from nowhere else.

Enabled by the scenario (`verifier: {env: {MATRIX_OFFLINE_TEST: "1"}}`, molecule/default): the
hosts sit on an internal Docker network and never got the controller's static host entries. The
registries are the ones this controller uses (its static /etc/hosts entries, the hosts of its apt
sources and of its pip index): the controller has a route to them, the hosts must not reach
them, neither by name nor by address. The other checks (the stack, real clients: E2EE message, file, TURN) are the
shared ones, unchanged.
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import urllib.parse

import pytest
import yaml

from conftest import EPHEMERAL, REPO, hosts_of, server

pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_OFFLINE_TEST") != "1",
                                reason="offline checks not enabled for this scenario (MATRIX_OFFLINE_TEST=1)")

def _deployed_bundle():
    """The bundle the scenario deployed from: the one the set-up's offline-bundle.yml names."""
    settings = EPHEMERAL / "bundle" / "offline-bundle.yml"
    if not settings.is_file():
        return pathlib.Path("/nonexistent")
    return pathlib.Path(yaml.safe_load(settings.read_text())["matrix_offline_bundle"])


BUNDLE = _deployed_bundle()


def _registries():
    """{name: [addresses]} of the registries this controller reaches, from its own configuration."""
    names = set()
    for line in pathlib.Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and not re.match(r"^(127\.|::1$|fe00:|ff0[0-9]:)", fields[0]):
            names.update(fields[1:])
    sources = subprocess.run(["apt-get", "indextargets", "--format", "$(URI)"], capture_output=True, text=True,
                             check=False).stdout.split()
    pip = subprocess.run([str(REPO / ".venv" / "bin" / "pip"), "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    urls = sources + re.findall(r"https?://[^'\s]+", pip)
    names.update(urllib.parse.urlsplit(url).hostname for url in urls if urllib.parse.urlsplit(url).hostname)
    registries = {}
    for name in sorted(names):
        try:
            registries[name] = sorted({info[4][0] for info in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)})
        except OSError:
            continue
    return registries


REGISTRIES = _registries()
HOSTS = hosts_of("matrix")


def test_the_controller_has_a_route_to_the_registries_so_the_next_test_means_something():
    # A route, not a connection: the tests send nothing beyond the machine.
    assert REGISTRIES, "no registry found in this controller's configuration"
    for name, addresses in REGISTRIES.items():
        for address in addresses:
            route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True, check=False)
            assert route.returncode == 0 and " dev " in route.stdout, (name, address, route.stdout + route.stderr)


@pytest.mark.parametrize("name", HOSTS)
def test_a_host_cannot_reach_any_registry_by_name_or_address(name):
    """The attempt fails: no name resolves, and a connection to each address is dropped at the
    internal network's edge (it never leaves this machine)."""
    host = server(name)
    for registry, addresses in REGISTRIES.items():
        assert host.run("getent hosts %s", registry).rc != 0, f"{name} resolves {registry}"
        for address in addresses:
            attempt = host.run("timeout 5 bash -c %s", f"</dev/tcp/{address}/443")
            assert attempt.rc != 0, f"{name} opened a connection to {registry} ({address}:443)"


@pytest.mark.parametrize("name", HOSTS)
def test_apt_on_a_host_reads_the_bundle_and_nothing_else(name):
    host = server(name)
    manifest = json.loads((BUNDLE / "MANIFEST.json").read_text())
    uris = host.check_output("apt-get indextargets --format '$(URI)'").split()
    assert uris and all(uri.startswith(f"file:/var/lib/matrix-bundle/{manifest['bundle']}/apt/") for uri in uris), uris
    update = host.run("apt-get update")
    assert update.rc == 0 and "Err:" not in update.stdout, update.stdout + update.stderr


@pytest.mark.parametrize("name", HOSTS)
def test_every_installed_package_is_the_bundle_version(name):
    """What the roles installed, and what came with them, is the bundle's own version."""
    manifest = json.loads((BUNDLE / "MANIFEST.json").read_text())
    installed = dict(line.split("\t") for line in server(name).check_output(
        "dpkg-query -W -f '${Package}\\t${Version}\\n'").splitlines())
    bundled = manifest["debian"]["packages"]
    for package in ["nginx", "coturn", "postgresql-15", "nftables", "auditd", "python3-psycopg2"]:
        assert installed.get(package) == bundled.get(package), (package, installed.get(package), bundled.get(package))
    newer_elsewhere = [p for p, v in installed.items() if p in bundled and v != bundled[p]]
    # Packages of the base image that the bundle carries too may only be older than the bundle's
    # (they were there before); none was installed from anywhere else.
    for package in newer_elsewhere:
        check = server(name).run("dpkg --compare-versions %s lt %s", installed[package], bundled[package])
        assert check.rc == 0, (package, installed[package], bundled[package])


@pytest.mark.parametrize("name", HOSTS)
def test_unattended_upgrades_take_the_bundle_and_run_without_a_network(name):
    """A newer bundle's packages reach the hosts unattended: the bundle's origin is allowed, and
    a dry run goes through with no network."""
    run = server(name).run("unattended-upgrade --dry-run --debug")
    output = run.stdout + run.stderr
    assert run.rc == 0, output[-3000:]
    assert re.search(r"Allowed origins are: .*origin=matrix-bundle,label=matrix-bundle", output), output[-3000:]
