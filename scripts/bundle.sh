#!/usr/bin/env bash
# Build the offline bundle: one archive that carries everything an air-gapped site needs to set up
# its controller and deploy the whole stack with no network beyond the site (docs/offline.md).
# Run it on a Debian 12 amd64 machine that reaches the Debian mirror and the Python index.
#
#   scripts/bundle.sh [--ref REF] [--out DIR] [--element-tarball FILE [--element-checksum sha256:HEX]]
#                     [--extra-debs DIR]
#
#   --ref REF            the toolkit version to bundle (a commit, tag or branch; default HEAD). Everything
#                        is read from that commit, not from the working tree.
#   --out DIR            where the archive goes (default dist/)
#   --element-tarball    Element web's release tarball, already downloaded; without it, it is
#                        downloaded from element_web_download_url. Either way its sha256 must match
#                        element_web_checksum of that commit, or --element-checksum (a locally built
#                        tarball, as the tests use).
#   --extra-debs DIR     Debian packages (DIR/*.deb) to carry in the apt repository besides the
#                        mirror's, each in place of the mirror's package of the same name: a
#                        site's own fixed package, or (the tests) a newer version of one.
#
# The bundle is named after the commit and its contents: matrix-bundle-<commit>-<digest>, the
# digest being the first 8 hex digits of the sha256 of every file's path and sha256. A rebuild
# of the same commit with newer packages (the mirror's security updates) is another bundle, with
# another name; the same inputs give the same name.
# The bundle (matrix-bundle-<commit>-<digest>/ in DIR/matrix-bundle-<commit>-<digest>.tar):
#   toolkit/             the toolkit at that commit (git archive)
#   wheels/controller/   wheels of requirements.txt, for the controller's virtualenv (Python 3.11)
#   wheels/synapse/<v>/  the wheels of each Synapse lock file (roles/synapse/files/requirements/)
#   element/             Element web's release tarball
#   apt.tar              an apt repository (apt/ once unpacked) (suite matrix-bundle, component main, amd64): the Debian
#                        packages every tier installs (each role's __<role>_apt_packages), the ones
#                        the toolkit needs (python3-apt on the hosts; python3-venv, gpgv on the
#                        controller), the packages of priority required and important (so that
#                        security updates of the base system travel too), all with their
#                        dependencies; Release signed with the bundle key (InRelease, Release.gpg),
#                        the key itself as keyring.gpg
#   MANIFEST.json        versions, every apt package and every file with its sha256
#   MANIFEST.json.asc    detached signature of the manifest
# Next to it: <archive>.sha256, <archive>.asc (detached signature) and the public key
# (matrix-bundle-key.asc, armored; .gpg, binary), which the site must get through another channel
# (or compare its fingerprint).
#
# The key is made once (ed25519) and kept in MATRIX_BUNDLE_GNUPGHOME (default
# .cache/bundle/gnupg): keep it as carefully as any signing key. Signatures are dated at the
# commit's time (or the key's creation, if later) and ed25519 signatures are deterministic: the
# same inputs (commit, key, mirror and index contents) give the same manifest and the same archive.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

REF=HEAD
OUT="${REPO_ROOT}/dist"
ELEMENT_TARBALL=""
ELEMENT_CHECKSUM=""
EXTRA_DEBS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ref) REF=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --element-tarball) ELEMENT_TARBALL=$(realpath "$2"); shift 2 ;;
    --element-checksum) ELEMENT_CHECKSUM=$2; shift 2 ;;
    --extra-debs) EXTRA_DEBS=$(realpath "$2"); shift 2 ;;
    *) echo "usage: $0 [--ref REF] [--out DIR] [--element-tarball FILE [--element-checksum sha256:HEX]] [--extra-debs DIR]" >&2
       exit 2 ;;
  esac
done
[ -z "$ELEMENT_CHECKSUM" ] || [ -n "$ELEMENT_TARBALL" ] || die "--element-checksum goes with --element-tarball"
[[ -z "$ELEMENT_CHECKSUM" || "$ELEMENT_CHECKSUM" =~ ^sha256:[0-9a-f]{64}$ ]] \
  || die "--element-checksum: expected sha256:<64 hex digits>"
[ -z "$EXTRA_DEBS" ] || compgen -G "${EXTRA_DEBS}/*.deb" >/dev/null || die "--extra-debs ${EXTRA_DEBS}: no .deb file there"

need_root
apt_install apt-utils gnupg curl
[ -x "${REPO_ROOT}/.venv/bin/pip" ] || die "no virtualenv: run scripts/bootstrap.sh first"

COMMIT=$(git -C "$REPO_ROOT" rev-parse --verify "${REF}^{commit}") || die "unknown ref: ${REF}"
SHORT=${COMMIT:0:12}
EPOCH=$(git -C "$REPO_ROOT" log -1 --format=%ct "$COMMIT")
export SOURCE_DATE_EPOCH=$EPOCH
BUNDLE_GNUPGHOME="${MATRIX_BUNDLE_GNUPGHOME:-${CACHE_DIR}/bundle/gnupg}"
started=$SECONDS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bundle.XXXXXX")
# gpg starts an agent for the key's folder: stop it with the build.
trap 'rm -rf "$WORK"; gpgconf --homedir "$BUNDLE_GNUPGHOME" --kill gpg-agent 2>/dev/null || true' EXIT
# Named once its contents are known (below).
ROOT="${WORK}/bundle"
TOOLKIT="${ROOT}/toolkit"
mkdir -p "$TOOLKIT" "$OUT"
OUT=$(cd "$OUT" && pwd)

log "toolkit ${COMMIT}"
git -C "$REPO_ROOT" archive --format=tar "$COMMIT" | tar -x -C "$TOOLKIT"

# --- The signing key (made once) -------------------------------------------------------------
mkdir -p "$BUNDLE_GNUPGHOME"
chmod 700 "$BUNDLE_GNUPGHOME"
gpg_bundle() { gpg --homedir "$BUNDLE_GNUPGHOME" --batch --quiet "$@"; }
if ! gpg_bundle --list-secret-keys 2>/dev/null | grep -q .; then
  log "making the bundle signing key in ${BUNDLE_GNUPGHOME}"
  gpg_bundle --passphrase '' --quick-generate-key "Matrix toolkit offline bundle" ed25519 sign never
fi
FINGERPRINT=$(gpg_bundle --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }')
KEY_CREATED=$(gpg_bundle --with-colons --list-secret-keys | awk -F: '$1 == "sec" { print $6; exit }')
SIGN_TIME=$(( EPOCH > KEY_CREATED ? EPOCH : KEY_CREATED ))
# sign OUTPUT INPUT [gpg options]: a detached (or, with --clearsign, inline) signature dated
# SIGN_TIME.
sign() {
  local output=$1 input=$2; shift 2
  gpg_bundle --faked-system-time "${SIGN_TIME}!" --digest-algo SHA512 --local-user "$FINGERPRINT" \
    --yes --output "$output" "$@" "$input" 2>/dev/null
}

# --- Element web ---------------------------------------------------------------------------
element_defaults="${TOOLKIT}/roles/element_web/defaults/main.yml"
ELEMENT_VERSION=$(ansible_eval element_web_version "$element_defaults")
mkdir -p "${ROOT}/element"
element_file="${ROOT}/element/element-v${ELEMENT_VERSION}.tar.gz"
if [ -n "$ELEMENT_TARBALL" ]; then
  cp "$ELEMENT_TARBALL" "$element_file"
else
  url=$(ansible_eval element_web_download_url "$element_defaults")
  log "downloading ${url}"
  curl -fsSL --retry 3 -o "$element_file" "$url"
fi
ELEMENT_CHECKSUM=${ELEMENT_CHECKSUM:-$(ansible_eval element_web_checksum "$element_defaults")}
actual="sha256:$(sha256sum "$element_file" | cut -d' ' -f1)"
[ "$actual" = "$ELEMENT_CHECKSUM" ] \
  || die "Element web tarball: ${actual}, expected ${ELEMENT_CHECKSUM}"

# --- Python wheels -------------------------------------------------------------------------
PIP=("${REPO_ROOT}/.venv/bin/pip" --disable-pip-version-check --quiet)
log "controller wheels (requirements.txt)"
# pip wheel: the index's wheels as they are, the few sdists built into wheels here (with
# SOURCE_DATE_EPOCH, reproducibly), so that the offline controller never builds anything.
"${PIP[@]}" wheel --requirement "${TOOLKIT}/requirements.txt" --wheel-dir "${ROOT}/wheels/controller"
SYNAPSE_VERSIONS=()
for lock in "${TOOLKIT}"/roles/synapse/files/requirements/synapse-*.txt; do
  v=$(basename "$lock" .txt); v=${v#synapse-}
  SYNAPSE_VERSIONS+=("$v")
  log "Synapse ${v} wheels (its lock file)"
  # The hosts' platform (Debian 12: glibc 2.36, CPython 3.11), whatever builds the bundle.
  "${PIP[@]}" download --require-hashes --only-binary=:all: --no-deps --requirement "$lock" \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_36_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "${ROOT}/wheels/synapse/${v}"
done

# --- Debian packages -----------------------------------------------------------------------
# A private apt state (the host's sources, keys and settings; an empty dpkg status, so that
# every dependency is fetched, not only what this machine lacks).
APT_DIR="${WORK}/apt-state"
mkdir -p "${APT_DIR}/lists/partial" "${APT_DIR}/archives/partial"
: >"${APT_DIR}/status"
cat >"${APT_DIR}/apt.conf" <<EOF
Dir::State "${APT_DIR}";
Dir::State::Lists "${APT_DIR}/lists";
Dir::State::status "${APT_DIR}/status";
Dir::Cache "${APT_DIR}";
Dir::Cache::Archives "${APT_DIR}/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Install-Recommends "false";
Debug::NoLocking "true";
APT::Sandbox::User "root";
EOF
apt_private() { APT_CONFIG="${APT_DIR}/apt.conf" "$@"; }
log "apt-get update (private state)"
apt_private apt-get update -qq >/dev/null
mapfile -t TIER_PACKAGES < <(roles_apt_packages "$TOOLKIT")
# The toolkit's own: python3-apt for Ansible's apt module on the hosts; the controller's
# virtualenv and signature checks.
TOOLKIT_PACKAGES=(python3-apt python3-venv gpgv openssh-client)
DEBINDEX=("${REPO_ROOT}/.venv/bin/python" "${REPO_ROOT}/scripts/debindex.py")
mapfile -t BASE_PACKAGES < <(apt_private apt-cache dumpavail | "${DEBINDEX[@]}" base)
log "apt: ${#TIER_PACKAGES[@]} tier packages, ${#TOOLKIT_PACKAGES[@]} for the toolkit, ${#BASE_PACKAGES[@]} of the base system, with their dependencies"
DEBIAN_FRONTEND=noninteractive apt_private apt-get install -qq -y --download-only --no-install-recommends \
  "${TIER_PACKAGES[@]}" "${TOOLKIT_PACKAGES[@]}" "${BASE_PACKAGES[@]}" >/dev/null
REPO="${ROOT}/apt"
mkdir -p "${REPO}/pool/main" "${REPO}/dists/matrix-bundle/main/binary-amd64"
mv "${APT_DIR}"/archives/*.deb "${REPO}/pool/main/"
if [ -n "$EXTRA_DEBS" ]; then
  for deb in "${EXTRA_DEBS}"/*.deb; do
    package=$(dpkg-deb --field "$deb" Package)
    log "apt: ${package} $(dpkg-deb --field "$deb" Version) from ${deb}, in place of the mirror's"
    rm -f "${REPO}/pool/main/${package}_"*.deb
    cp "$deb" "${REPO}/pool/main/"
  done
fi
(
  cd "$REPO"
  # Sorted stanzas, whatever order the directory walk gives.
  apt-ftparchive packages pool | "${DEBINDEX[@]}" sort >dists/matrix-bundle/main/binary-amd64/Packages
  gzip -9n -k dists/matrix-bundle/main/binary-amd64/Packages
  apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=matrix-bundle \
    -o APT::FTPArchive::Release::Label=matrix-bundle \
    -o APT::FTPArchive::Release::Suite=matrix-bundle \
    -o APT::FTPArchive::Release::Codename=matrix-bundle \
    -o APT::FTPArchive::Release::Architectures=amd64 \
    -o APT::FTPArchive::Release::Components=main \
    -o APT::FTPArchive::Release::Description="Matrix toolkit offline bundle ${SHORT}" \
    -o APT::FTPArchive::Release::Date="$(LC_ALL=C date -u -d "@${EPOCH}" '+%a, %d %b %Y %H:%M:%S UTC')" \
    release dists/matrix-bundle >dists/matrix-bundle/Release.new
  mv dists/matrix-bundle/Release.new dists/matrix-bundle/Release
)
sign "${REPO}/dists/matrix-bundle/InRelease" "${REPO}/dists/matrix-bundle/Release" --clearsign
sign "${REPO}/dists/matrix-bundle/Release.gpg" "${REPO}/dists/matrix-bundle/Release" --detach-sign
gpg_bundle --export "$FINGERPRINT" >"${REPO}/keyring.gpg"
# The package names and versions, for the manifest (before the repository becomes one file).
"${DEBINDEX[@]}" versions <"${REPO}/dists/matrix-bundle/main/binary-amd64/Packages" >"${WORK}/packages.json"
PACKAGE_COUNT=$(grep -c '^Package: ' "${REPO}/dists/matrix-bundle/main/binary-amd64/Packages")
# One file, so that each host receives it in one transfer and unpacks it (offline_bundle role).
deterministic_tar() { tar --sort=name --mtime="@${EPOCH}" --owner=0 --group=0 --numeric-owner \
  --mode='u+rwX,go+rX,go-w' --format=gnu "$@"; }
deterministic_tar -C "$ROOT" -cf "${ROOT}/apt.tar" apt
rm -rf "$REPO"

# --- Name and manifest ---------------------------------------------------------------------
# One pass over every file: its sha256 for the manifest, and the name, the commit and a digest of
# every file's path and sha256, so that another content is another name, on the controller and on
# the hosts (/var/lib/matrix-bundle/<name>).
log "manifest"
NAME=$("${REPO_ROOT}/.venv/bin/python" - "$ROOT" "${WORK}/packages.json" "$COMMIT" "$EPOCH" "$FINGERPRINT" "$ELEMENT_VERSION" \
  "$ELEMENT_CHECKSUM" "${SYNAPSE_VERSIONS[@]}" <<'EOF'
import hashlib, json, os, sys
root, packages_file, commit, epoch, fingerprint, element_version, element_checksum, *synapse = sys.argv[1:]
files = {}
for directory, _, names in os.walk(root):
    for name in names:
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, root)
        with open(path, "rb") as handle:
            files[relative] = hashlib.sha256(handle.read()).hexdigest()
files = dict(sorted(files.items()))
digest = hashlib.sha256("".join(f"{sha}  {path}\n" for path, sha in files.items()).encode()).hexdigest()
bundle = f"matrix-bundle-{commit[:12]}-{digest[:8]}"
with open(packages_file) as handle:
    packages = json.load(handle)
manifest = {
    "format": 1,
    "bundle": bundle,
    "toolkit": {"commit": commit, "date": int(epoch)},
    "signing_key": fingerprint,
    "debian": {"release": "12", "architecture": "amd64", "suite": "matrix-bundle",
               "packages": packages},
    "synapse": {"versions": sorted(synapse)},
    "element_web": {"version": element_version, "checksum": element_checksum,
                    "file": f"element/element-v{element_version}.tar.gz"},
    "controller": {"python": "3.11",
                   "wheels": sorted(n for n in files if n.startswith("wheels/controller/"))},
    "files": files,
}
with open(os.path.join(root, "MANIFEST.json"), "w") as handle:
    json.dump(manifest, handle, indent=1, sort_keys=True)
    handle.write("\n")
print(bundle)
EOF
)
mv "$ROOT" "${WORK}/${NAME}"
ROOT="${WORK}/${NAME}"
log "named ${NAME}"
sign "${ROOT}/MANIFEST.json.asc" "${ROOT}/MANIFEST.json" --armor --detach-sign

# --- The archive ---------------------------------------------------------------------------
ARCHIVE="${OUT}/${NAME}.tar"
deterministic_tar -C "$WORK" -cf "$ARCHIVE" "$NAME"
(cd "$OUT" && sha256sum "${NAME}.tar" >"${NAME}.tar.sha256")
sign "${ARCHIVE}.asc" "$ARCHIVE" --armor --detach-sign
gpg_bundle --armor --export "$FINGERPRINT" >"${OUT}/matrix-bundle-key.asc"
gpg_bundle --export "$FINGERPRINT" >"${OUT}/matrix-bundle-key.gpg"

size=$(du -m "$ARCHIVE" | cut -f1)
log "built ${ARCHIVE} (${size} MiB, ${PACKAGE_COUNT} Debian packages) in $((SECONDS - started)) s"
log "signing key ${FINGERPRINT} (public key: ${OUT}/matrix-bundle-key.asc)"
printf '%s\n' "$ARCHIVE"
