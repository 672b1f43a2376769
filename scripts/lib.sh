# shellcheck shell=bash
# Shared helpers for the harness scripts. Source it, do not run it:
#   . "$(dirname "$0")/lib.sh"

# Repository root (the directory above scripts/), independent of the caller's cwd.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${REPO_ROOT}/.cache"
export REPO_ROOT CACHE_DIR

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and runs dockerd)"
}

# apt-get update at most once per process tree (APT_UPDATED is exported).
__apt_update_once() {
  if [ -z "${APT_UPDATED:-}" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
    export APT_UPDATED
  fi
}

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# apt_install PKG...: install only the packages that are missing; silent when none are.
apt_install() {
  local missing=() p
  for p in "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  need_root
  __apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# True when a Docker engine answers on the current DOCKER_HOST / default socket.
docker_answers() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}
