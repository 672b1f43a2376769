#!/usr/bin/env bash
# Set up the controller from an offline bundle (scripts/bundle.sh), with no network at all
# (docs/offline.md):
#
#   scripts/offline-setup.sh BUNDLE.tar --key KEY [--dest DIR]
#
#   BUNDLE.tar   the archive, with BUNDLE.tar.asc beside it
#   --key KEY    the bundle's public key as the site received it, through another channel than
#                the bundle (armored .asc or binary .gpg): the trust anchor
#   --dest DIR   where to unpack (default: beside the archive, <dir>/matrix-bundle-<commit>-<digest>/)
#
# It verifies the archive's signature (gpgv), unpacks it, verifies the manifest's signature and
# every file's sha256 (roles/offline_bundle/files/verify_bundle.py, the check the deployment's
# preflight repeats), installs python3-venv from the bundle's own apt repository if the controller
# lacks it, creates the toolkit's virtualenv from the bundled wheels only, and writes
# <toolkit>/offline-bundle.yml (matrix_offline_bundle, matrix_offline_bundle_key): give it to the
# deployment (-e @offline-bundle.yml, or copy it into the inventory's group_vars/matrix/).
# Run this copy of the script only after checking the archive by hand (docs/offline.md); the
# unpacked toolkit then has its own.
set -euo pipefail

log() { printf '[offline-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 BUNDLE.tar --key KEY [--dest DIR]" >&2; exit 2; }

ARCHIVE=""
KEY=""
DEST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) KEY=${2:-}; shift 2 ;;
    --dest) DEST=${2:-}; shift 2 ;;
    -*) usage ;;
    *) [ -z "$ARCHIVE" ] || usage; ARCHIVE=$1; shift ;;
  esac
done
{ [ -n "$ARCHIVE" ] && [ -n "$KEY" ]; } || usage
[ -f "$ARCHIVE" ] || die "${ARCHIVE}: no such file"
[ -f "${ARCHIVE}.asc" ] || die "${ARCHIVE}.asc: no such file (the archive's detached signature)"
[ -f "$KEY" ] || die "${KEY}: no such file"
for tool in gpgv tar python3; do
  command -v "$tool" >/dev/null || die "${tool} is missing (Debian 12 has it in its base system)"
done
started=$SECONDS
ARCHIVE=$(realpath "$ARCHIVE")
KEY=$(realpath "$KEY")
NAME=$(basename "$ARCHIVE" .tar)
[[ $NAME =~ ^matrix-bundle-[0-9a-f]{12}-[0-9a-f]{8}$ ]] \
  || die "${ARCHIVE}: not a bundle name (matrix-bundle-<commit>-<digest>.tar)"
DEST=$(realpath -m "${DEST:-$(dirname "$ARCHIVE")/${NAME}}")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# gpgv reads a binary keyring: dearmor an .asc key (the same code as the deployment's check).
python3 - "$KEY" "${WORK}/key.gpg" <<'EOF'
import base64, sys
data = open(sys.argv[1], "rb").read()
text = data.decode("ascii", "replace")
if "-----BEGIN PGP" in text:
    body = text.split("-----BEGIN PGP", 1)[1].split("\n\n", 1)[1].split("-----END PGP", 1)[0]
    data = base64.b64decode("".join(l.strip() for l in body.splitlines() if l.strip() and not l.startswith("=")))
open(sys.argv[2], "wb").write(data)
EOF
log "checking the signature of ${ARCHIVE}"
gpgv --keyring "${WORK}/key.gpg" "${ARCHIVE}.asc" "$ARCHIVE" 2>"${WORK}/gpgv.log" \
  || { cat "${WORK}/gpgv.log" >&2; die "${ARCHIVE}: the signature does not verify with ${KEY}"; }

# An empty folder (made by the operator for --dest) is unpacked into; a folder with anything
# else than an unpacked bundle is refused before anything is written.
if [ -d "$DEST" ] && [ -z "$(ls -A "$DEST")" ]; then
  rmdir "$DEST"
fi
if [ -d "$DEST" ]; then
  [ -f "${DEST}/MANIFEST.json" ] && [ -f "${DEST}/toolkit/roles/offline_bundle/files/verify_bundle.py" ] \
    || die "${DEST} exists and does not hold an unpacked bundle (no MANIFEST.json and toolkit/): name an empty or new folder with --dest"
  log "${DEST} exists: verifying it as it is (delete it to unpack again)"
else
  log "unpacking into ${DEST}"
  mkdir -p "${DEST}.partial"
  tar -xf "$ARCHIVE" -C "${DEST}.partial" --strip-components=1 --no-same-owner
  mv "${DEST}.partial" "$DEST"
fi
TOOLKIT="${DEST}/toolkit"
log "checking the manifest and every file"
python3 "${TOOLKIT}/roles/offline_bundle/files/verify_bundle.py" "$DEST" "$KEY" >"${WORK}/verify.json"
python3 - "${WORK}/verify.json" <<'EOF' || die "the bundle in ${DEST} does not match its manifest"
import json, sys
errors = json.load(open(sys.argv[1]))["errors"]
for error in errors:
    print("  " + error, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "python3-venv is missing: run as root to install it from the bundle"
  log "installing python3-venv from the bundle's apt repository"
  tar -xf "${DEST}/apt.tar" -C "$WORK"
  printf 'Types: deb\nURIs: file:%s/apt\nSuites: matrix-bundle\nComponents: main\nSigned-By: %s\n' \
    "$WORK" "${WORK}/key.gpg" >"${WORK}/bundle.sources"
  apt_bundle=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=${WORK}/sources.d"
              -o "Dir::State::Lists=${WORK}/lists" -o "APT::Sandbox::User=root")
  mkdir -p "${WORK}/sources.d" "${WORK}/lists/partial"
  mv "${WORK}/bundle.sources" "${WORK}/sources.d/"
  apt-get "${apt_bundle[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_bundle[@]}" install -y -qq --no-install-recommends python3-venv >/dev/null
fi

log "creating ${TOOLKIT}/.venv from the bundled wheels"
[ -d "${TOOLKIT}/.venv" ] || python3 -m venv "${TOOLKIT}/.venv"
# No index, no host pip configuration: the bundled wheels or nothing.
PIP_CONFIG_FILE=/dev/null "${TOOLKIT}/.venv/bin/pip" install --quiet --disable-pip-version-check \
  --no-index --find-links "${DEST}/wheels/controller" --only-binary=:all: \
  --requirement "${TOOLKIT}/requirements.txt"

cat >"${TOOLKIT}/offline-bundle.yml" <<EOF
---
# Written by scripts/offline-setup.sh: deploy from this bundle only (docs/offline.md).
matrix_offline_bundle: ${DEST}
matrix_offline_bundle_key: ${KEY}
EOF
log "ready in $((SECONDS - started)) s: cd ${TOOLKIT} && . .venv/bin/activate, then deploy with -e @offline-bundle.yml"
printf '%s\n' "$TOOLKIT"
