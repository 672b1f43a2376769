# shellcheck shell=bash
# Shared helpers for the harness scripts. Source it, do not run it:
#   . "$(dirname "$0")/lib.sh"

# Repository root (the directory above scripts/), independent of the caller's cwd.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${REPO_ROOT}/.cache"
export REPO_ROOT CACHE_DIR

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ansible_eval EXPRESSION VARS_FILE...: the value of a Jinja expression over the variables of
# the given files, as Ansible templates it (the project's virtualenv; no YAML parsed by hand).
# Strings print as they are, lists and dicts as JSON.
ansible_eval() {
  local expression=$1; shift
  local files=() file
  for file in "$@"; do files+=(-e "@${file}"); done
  # The repository's ansible.cfg, whatever the caller's (Molecule's enables more callbacks).
  (cd "$REPO_ROOT" && ANSIBLE_CONFIG="${REPO_ROOT}/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_LOAD_CALLBACK_PLUGINS=1 \
    ANSIBLE_STDOUT_CALLBACK=json "${REPO_ROOT}/.venv/bin/ansible" localhost -c local -i localhost, "${files[@]}" \
    -m ansible.builtin.debug -a "msg={{ ${expression} }}") 2>/dev/null |
    "${REPO_ROOT}/.venv/bin/python" -c 'import json, sys
report, _ = json.JSONDecoder().raw_decode(sys.stdin.read())
value = report["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
print(value if isinstance(value, str) else json.dumps(value))'
}

# role_default ROLE VARIABLE: the value of a role's default (roles/ROLE/defaults/main.yml).
role_default() {
  ansible_eval "$2" "${REPO_ROOT}/roles/$1/defaults/main.yml"
}

# roles_apt_packages [ROOT]: every Debian package the roles may install (the union of each
# role's __<role>_apt_packages, over its defaults), one name per line, sorted. ROOT: the toolkit
# tree to read (default: this one).
roles_apt_packages() {
  local root=${1:-$REPO_ROOT} files=() names=() vars role
  for vars in "${root}"/roles/*/vars/main.yml; do
    role=$(basename "$(dirname "$(dirname "$vars")")")
    grep -q "^__${role}_apt_packages:" "$vars" || continue
    names+=("__${role}_apt_packages")
    files+=("${root}/roles/${role}/defaults/main.yml" "$vars")
  done
  local expression
  expression="[$(IFS=,; echo "${names[*]}")] | map('dict2items') | flatten | map(attribute='value') | flatten | unique | sort"
  ansible_eval "$expression" "${files[@]}" | "${REPO_ROOT}/.venv/bin/python" -c 'import json, sys
print("\n".join(json.load(sys.stdin)))'
}

# hardware_virtualisation: true when QEMU can use KVM on this machine (the CPU offers VT-x or
# AMD-V and /dev/kvm is writable). Without it QEMU emulates the CPU in software (TCG), about 15
# times slower per module run than a container (docs/testing.md, "Real virtual machines").
hardware_virtualisation() {
  grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]
}

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

# host_apt_entries: print "URI SUITE COMPONENTS..." for every enabled `deb` entry of the host's
# apt sources (deb822 *.sources and one-line sources.list / *.list), so that images use the same
# mirrors as the host without a mirror name in the repository (the container and VM images).
host_apt_entries() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "" && suites != "") {
          nu = split(uris, u, " "); ns = split(suites, s, " ")
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j], comps
        }
        types = uris = suites = comps = enabled = ""; key = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { v = $0; sub(/^[ \t]+/, "", v)
                 if (key == "uris") uris = uris " " v
                 else if (key == "suites") suites = suites " " v
                 else if (key == "components") comps = comps " " v
                 next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        v = $0; sub(/^[^:]*:[ \t]*/, "", v)
        if (key == "types") types = v
        else if (key == "uris") uris = v
        else if (key == "suites") suites = v
        else if (key == "components") comps = v
        else if (key == "enabled") enabled = tolower(v)
      }
      END { flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 {
      line = $2 " " $3; for (i = 4; i <= NF; i++) line = line " " $i; print line }'
  done
}

# host_apt_options: the host's apt settings that make its mirrors usable (snapshot mirrors with
# expired Release files, proxies), one `Key "value";` line each.
host_apt_options() {
  apt-config dump 2>/dev/null \
    | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|https?::proxy) ' || true
}

# host_static_hosts: the static, non-loopback entries of the host's /etc/hosts ("IP name...").
host_static_hosts() {
  sed -e 's/#.*//' /etc/hosts | awk 'NF >= 2 && $1 ~ /^[0-9a-fA-F:.]+$/ \
    && $1 !~ /^(127\.|::1$|fe00:|ff0[0-9]:)/ { $1 = $1; print }'
}
