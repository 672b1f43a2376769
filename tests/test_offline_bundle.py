"""The offline bundle's preflight: a bundle that does not match its manifest, whose manifest is
not signed by the site's key, or that lacks a package a host needs, is refused before any host is
contacted; a sound one passes (then the hosts, on a closed port, are unreachable).

The bundle here is a small one made by the test (the layout and manifest of scripts/bundle.sh,
signed with a key made for the test): what is checked is the verification, not the packages.
"""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO, run
from test_bad_inventories import _site, _valid_settings, _write_inventory

VERIFY = REPO / "roles" / "offline_bundle" / "files" / "verify_bundle.py"


def _gpg(home, *args, **kwargs):
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
                          check=True, capture_output=True, **kwargs)


def _key(home):
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-generate-key", "test bundle key", "ed25519", "sign", "never")
    return _gpg(home, "--armor", "--export").stdout


def _sign(home, root):
    _gpg(home, "--yes", "--armor", "--detach-sign", "--output", str(root / "MANIFEST.json.asc"),
         str(root / "MANIFEST.json"))


def _write_manifest(root, packages):
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = str(path.relative_to(root))
        if not relative.startswith("toolkit/") and not relative.startswith("MANIFEST.json"):
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"format": 1, "bundle": root.name, "debian": {"packages": packages},
                "synapse": {"versions": ["1.163.2"]}, "files": files,
                "element_web": {"version": "1.11.112", "file": "element/element-v1.11.112.tar.gz"}}
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def needed_packages():
    """Every package a role may install (scripts/lib.sh: roles_apt_packages) and python3-apt."""
    result = run(["bash", "-c", ". scripts/lib.sh && roles_apt_packages"], check=True)
    return sorted(result.stdout.split() + ["python3-apt"])


@pytest.fixture
def bundle(tmp_path, needed_packages):
    """A sound bundle, its key (armored, as the site received it), and the signing home."""
    yield from _bundle(tmp_path, needed_packages)
    # gpg started an agent per key folder: stop them with the test.
    for home in tmp_path.glob("*gnupg"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def _bundle(tmp_path, needed_packages):
    home = tmp_path / "gnupg"
    key = tmp_path / "site-key.asc"
    key.write_bytes(_key(home))
    root = tmp_path / "matrix-bundle-0123456789ab-89abcdef"
    (root / "wheels" / "synapse" / "1.163.2").mkdir(parents=True)
    (root / "element").mkdir()
    (root / "toolkit").mkdir()
    (root / "apt.tar").write_bytes(os.urandom(4096))
    (root / "wheels" / "synapse" / "1.163.2" / "matrix_synapse-1.163.2-cp311-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    (root / "element" / "element-v1.11.112.tar.gz").write_bytes(b"element")
    _write_manifest(root, {name: "1.0" for name in needed_packages})
    _sign(home, root)
    yield root, key, home


def _report(root, key):
    result = subprocess.run(["python3", str(VERIFY), str(root), str(key)], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


def _verify(root, key):
    return _report(root, key)["errors"]


def test_the_bundle_name_is_the_signed_one_wherever_it_is_unpacked(bundle, tmp_path, needed_packages):
    """The hosts keep the repository under the manifest's name (/var/lib/matrix-bundle/<name>),
    not under the controller's folder name; a signed name that is not a bundle name is refused."""
    root, key, home = bundle
    elsewhere = tmp_path / "unpacked-here"
    shutil.copytree(root, elsewhere)
    assert _report(elsewhere, key) | {"packages": None} == _report(root, key) | {"packages": None}
    assert _report(elsewhere, key)["bundle"] == root.name
    manifest = json.loads((root / "MANIFEST.json").read_text())
    manifest["bundle"] = "../../etc"
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    _sign(home, root)
    assert _verify(root, key) == ["MANIFEST.json: bundle name '../../etc' is not matrix-bundle-<commit>-<digest>"]


def test_a_sound_bundle_verifies_and_every_change_is_named(bundle, tmp_path):
    root, key, _ = bundle
    assert _verify(root, key) == []
    # The controller's own files under toolkit/ (its virtualenv) are not the manifest's business.
    (root / "toolkit" / ".venv").mkdir()
    (root / "toolkit" / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert _verify(root, key) == []
    (root / "element" / "element-v1.11.112.tar.gz").write_bytes(b"changed")
    (root / "element" / "extra.js").write_text("alert(1)")
    (root / "wheels" / "synapse" / "1.163.2").joinpath(
        "matrix_synapse-1.163.2-cp311-abi3-manylinux_2_28_x86_64.whl").unlink()
    assert _verify(root, key) == [
        "element/element-v1.11.112.tar.gz: sha256 differs from the manifest",
        "wheels/synapse/1.163.2/matrix_synapse-1.163.2-cp311-abi3-manylinux_2_28_x86_64.whl: listed in the manifest, missing",
        "element/extra.js: not in the manifest",
    ]


def _offline_site(tmp_path, root, key):
    settings = _valid_settings()
    settings.update(matrix_offline_bundle=str(root), matrix_offline_bundle_key=str(key))
    inventory = tmp_path / f"inventory-{len(list(tmp_path.glob('inventory-*')))}"
    inventory.mkdir()
    return _site(_write_inventory(inventory, settings))


def _assert_stopped(result, message):
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert message in output, f"expected {message!r} in:\n{output}"
    assert "UNREACHABLE" not in output, f"a host was contacted:\n{output}"
    assert "changed=1" not in output and "PLAY [Deploy" not in output, output


def test_a_sound_bundle_passes_validation_then_needs_the_hosts(bundle, tmp_path):
    root, key, _ = bundle
    result = _offline_site(tmp_path, root, key)
    output = result.stdout + result.stderr
    assert "PLAY [Check the hosts]" in output, output
    assert "UNREACHABLE" in output, output
    assert "failed=1" not in output.split("PLAY [Check the hosts]")[0], output


def test_a_tampered_file_is_refused(bundle, tmp_path):
    root, key, _ = bundle
    with open(root / "apt.tar", "r+b") as handle:
        handle.write(b"\0")
    _assert_stopped(_offline_site(tmp_path, root, key),
                    f"The offline bundle {root} cannot be trusted: apt.tar: sha256 differs from the manifest")


def test_a_manifest_signed_with_another_key_is_refused(bundle, tmp_path):
    root, key, _ = bundle
    other = tmp_path / "other-key.asc"
    other.write_bytes(_key(tmp_path / "other-gnupg"))
    _assert_stopped(_offline_site(tmp_path, root, other),
                    f"cannot be trusted: MANIFEST.json: the signature does not verify with {other}")
    # A manifest changed after signing fails the same way, with the right key.
    manifest = json.loads((root / "MANIFEST.json").read_text())
    manifest["files"]["apt.tar"] = hashlib.sha256((root / "apt.tar").read_bytes() + b"x").hexdigest()
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    errors = _verify(root, key)
    assert len(errors) == 1 and errors[0].startswith(f"MANIFEST.json: the signature does not verify with {key}"), errors


def test_a_bundle_without_a_package_a_host_needs_is_refused_and_names_it(bundle, tmp_path, needed_packages):
    root, key, home = bundle
    _write_manifest(root, {name: "1.0" for name in needed_packages if name not in ("coturn", "nftables")})
    _sign(home, root)
    result = _offline_site(tmp_path, root, key)
    _assert_stopped(result, f"The offline bundle {root.name} lacks coturn, nftables, needed on turn1.example.gouv.fr")
    # Every host needs the firewall; only the TURN host needs coturn.
    _assert_stopped(result, f"The offline bundle {root.name} lacks nftables, needed on db1.example.gouv.fr")



def test_setup_refuses_a_dest_folder_that_holds_something_else(bundle, tmp_path):
    """scripts/offline-setup.sh --dest: an existing folder that is not an unpacked bundle is refused
    with its reason, before anything is written into it (an empty one is unpacked into)."""
    root, key, home = bundle
    archive = tmp_path / f"{root.name}.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), root.name], check=True)
    _gpg(home, "--yes", "--armor", "--detach-sign", "--output", f"{archive}.asc", str(archive))
    dest = tmp_path / "operators-folder"
    dest.mkdir()
    (dest / "notes.txt").write_text("kept\n")
    result = run(["scripts/offline-setup.sh", str(archive), "--key", str(key), "--dest", str(dest)])
    assert result.returncode != 0
    assert "exists and does not hold an unpacked bundle" in result.stderr, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "kept\n"
