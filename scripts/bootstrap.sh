#!/usr/bin/env bash
# Idempotent set-up of a Debian 12 machine (root) for linting and Molecule tests:
#   1. Debian packages: docker.io, debootstrap, python3-venv, make, git, testssl.sh, chromium
#   2. the virtualenv <repo>/.venv from requirements.txt (pip uses the host's own configuration)
#   3. the Docker engine (scripts/docker-engine.sh start)
#   4. the base image matrix-ansible/debian12-systemd:bookworm (scripts/build-base-image.sh)
#   5. the Element web fixture, when scripts/build-element-fixture.sh exists
# Everything already in place: a few seconds. Prints what it did.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

need_root
cd "$REPO_ROOT"
total_start=$SECONDS
done_steps=()

step() { # step LABEL START: record how long a step took
  done_steps+=("$1 ($((SECONDS - $2))s)")
}

# 1. Packages. The engine itself is installed (and only if missing) by docker-engine.sh, but a
#    fresh machine gets everything in one apt run.
t=$SECONDS
missing=()
# testssl.sh: the audit's TLS scan (playbooks/audit.yml); chromium: its test opens the HTML report.
for p in docker.io debootstrap debian-archive-keyring python3-venv make git testssl.sh chromium; do
  pkg_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
  step "installed ${missing[*]}" "$t"
else
  done_steps+=("apt packages already present")
fi

# 2. Virtualenv. Reinstalled only when requirements.txt changes (its hash is stamped in .venv).
t=$SECONDS
VENV="${REPO_ROOT}/.venv"
REQ="${REPO_ROOT}/requirements.txt"
STAMP="${VENV}/.requirements.sha256"
req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "${VENV}/bin/python" ] || ! "${VENV}/bin/python" -c 'import sys' 2>/dev/null; then
  log "creating ${VENV}"
  rm -rf "$VENV"
  # Debian's interpreter (python3-venv), not whatever python3 comes first in PATH.
  /usr/bin/python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$req_hash" ]; then
  log "pip install -r requirements.txt (a minute or two on a fresh venv)"
  # Hosts whose pip configuration names local wheel folders that do not exist print one
  # warning per package; drop only that line.
  {
    "${VENV}/bin/python" -m pip install --quiet --upgrade pip
    "${VENV}/bin/python" -m pip install --quiet -r "$REQ"
  } 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  printf '%s\n' "$req_hash" >"$STAMP"
  step "virtualenv .venv from requirements.txt" "$t"
else
  done_steps+=("virtualenv .venv up to date")
fi

# 3. Docker engine.
t=$SECONDS
if docker_answers; then
  done_steps+=("Docker engine already running")
else
  "${REPO_ROOT}/scripts/docker-engine.sh" start
  step "started the Docker engine (pidfile .cache/dockerd/dockerd.pid)" "$t"
fi

# 4. Base image (the script itself says whether it loaded, built or skipped).
t=$SECONDS
"${REPO_ROOT}/scripts/build-base-image.sh"
step "base image matrix-ansible/debian12-systemd:bookworm" "$t"

# 5. Element web fixture (optional).
if [ -x "${REPO_ROOT}/scripts/build-element-fixture.sh" ]; then
  t=$SECONDS
  fixture="$("${REPO_ROOT}/scripts/build-element-fixture.sh")"
  step "Element web fixture ${fixture#"${REPO_ROOT}"/}" "$t"
fi

log "done in $((SECONDS - total_start))s:"
for s in "${done_steps[@]}"; do
  log "  - $s"
done
log "activate the tools with: source .venv/bin/activate"
