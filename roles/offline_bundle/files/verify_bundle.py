#!/usr/bin/env python3
"""Verify an unpacked offline bundle (scripts/bundle.sh) against a trusted public key.

    verify_bundle.py BUNDLE_DIR KEY

KEY: the bundle's public key as the site received it (armored or binary). Prints one JSON object:
{"errors": [...], "bundle", "packages": {name: version}, "synapse_versions", "element_web"}.
An error is a failed manifest signature, a file of the manifest that is missing or whose sha256
differs, or a file the manifest does not list (outside toolkit/, where the controller's own
virtualenv and caches live). Standard library and gpgv only: it runs on a controller that has
nothing else yet.
"""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile


def dearmor(data):
    """Binary OpenPGP data from an armored block (or the data itself if not armored)."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP" not in text:
        return data
    body = text.split("-----BEGIN PGP", 1)[1].split("\n\n", 1)[1].split("-----END PGP", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip() and not line.startswith("=")]
    return base64.b64decode("".join(lines))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


NAME = re.compile(r"^matrix-bundle-[0-9a-f]{12}-[0-9a-f]{8}$")


def main(bundle, key):
    result = {"errors": [], "bundle": os.path.basename(os.path.normpath(bundle)), "packages": {},
              "synapse_versions": [], "element_web": {}}
    errors = result["errors"]
    manifest_path = os.path.join(bundle, "MANIFEST.json")
    for path in (manifest_path, manifest_path + ".asc", key):
        if not os.path.isfile(path):
            errors.append(f"{path}: no such file")
    if errors:
        return result
    with tempfile.TemporaryDirectory() as work:
        keyring = os.path.join(work, "key.gpg")
        with open(key, "rb") as source, open(keyring, "wb") as target:
            target.write(dearmor(source.read()))
        check = subprocess.run(["gpgv", "--keyring", keyring, manifest_path + ".asc", manifest_path],
                               capture_output=True, text=True, check=False)
    if check.returncode != 0:
        errors.append("MANIFEST.json: the signature does not verify with " + key + ": "
                      + " ".join(check.stderr.split()))
        return result
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    # The name the hosts keep the repository under (/var/lib/matrix-bundle/<name>): the signed
    # one, whatever folder the bundle was unpacked into.
    name = str(manifest.get("bundle", ""))
    if not NAME.match(name):
        errors.append(f"MANIFEST.json: bundle name {name!r} is not matrix-bundle-<commit>-<digest>")
    result["bundle"] = name
    files = manifest.get("files", {})
    for relative, expected in sorted(files.items()):
        path = os.path.join(bundle, relative)
        if not os.path.isfile(path):
            errors.append(f"{relative}: listed in the manifest, missing")
        elif sha256(path) != expected:
            errors.append(f"{relative}: sha256 differs from the manifest")
    for directory, subdirectories, names in os.walk(bundle):
        relative_dir = os.path.relpath(directory, bundle)
        if relative_dir == "toolkit" or relative_dir.startswith("toolkit" + os.sep):
            subdirectories[:] = []
            continue
        for name in names:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if relative not in files and relative not in ("MANIFEST.json", "MANIFEST.json.asc"):
                errors.append(f"{relative}: not in the manifest")
    result["packages"] = manifest.get("debian", {}).get("packages", {})
    result["synapse_versions"] = manifest.get("synapse", {}).get("versions", [])
    result["element_web"] = manifest.get("element_web", {})
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(json.dumps(main(sys.argv[1], sys.argv[2]), sort_keys=True))
