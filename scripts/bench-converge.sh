#!/usr/bin/env bash
# Cold converge against its floor, side by side in one run, on the same image.
#   scripts/bench-converge.sh [SCENARIO...]     (default: default-online default multi-host)
# For each Molecule scenario: fresh hosts, cold converge of playbooks/site.yml,
# then the idempotent re-run (`default` deploys from the offline bundle, `multi-host` from the
# mirror and the index; `default-online` is `default` with MATRIX_DEFAULT_OFFLINE=0: the same
# host from the mirror and the index, so that offline/online compares like with like; the
# bundle's build and the controller's set-up are prepare's, not timed). Then the floor: one
# fresh `default-online` host where the same packages (the exact apt packages the converges
# installed, read back from dpkg) and the same Synapse release are installed with apt-get and
# pip, no Ansible. Prints seconds and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null 2>&1
# shellcheck disable=SC1091
source .venv/bin/activate
# shellcheck source=lib.sh
. scripts/lib.sh

if [ $# -gt 0 ]; then SCENARIOS=("$@"); else SCENARIOS=(default-online default multi-host); fi
SYNAPSE_VERSION=$(role_default synapse synapse_version)
LOCK=roles/synapse/files/requirements/synapse-${SYNAPSE_VERSION}.txt
LOGS=$(mktemp -d)

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }
hosts_of() { python3 -c 'import sys, yaml; print(" ".join(p["name"] for p in yaml.safe_load(open(f"molecule/{sys.argv[1]}/molecule.yml"))["platforms"]))' "$1"; }
fresh() {
  molecule destroy -s "$1" >/dev/null 2>&1 || true
  molecule create -s "$1" >/dev/null 2>&1
  molecule prepare -s "$1" --force >/dev/null 2>&1
}
manual_packages() { for h in "$@"; do docker exec "$h" apt-mark showmanual; done | sort -u; }

current=""
trap '[ -z "$current" ] || molecule destroy -s "$current" >/dev/null 2>&1 || true' EXIT

declare -A converge rerun
base=$(mktemp); installed=$(mktemp)
for label in "${SCENARIOS[@]}"; do
  scenario=${label%-online}
  if [ "$label" = default-online ]; then export MATRIX_DEFAULT_OFFLINE=0; else export MATRIX_DEFAULT_OFFLINE=1; fi
  current=$scenario
  read -ra hosts <<<"$(hosts_of "$scenario")"
  echo "== $label: cold converge and re-run (${hosts[*]})"
  fresh "$scenario"
  manual_packages "${hosts[@]}" >"$base"
  t0=$(now); molecule converge -s "$scenario" >"$LOGS/$label-converge.log" 2>&1; t1=$(now)
  molecule converge -s "$scenario" >"$LOGS/$label-rerun.log" 2>&1; t2=$(now)
  for step in converge rerun; do
    grep -q 'failed=0' "$LOGS/$label-$step.log" || { echo "the $step of $label failed: $LOGS/$label-$step.log" >&2; exit 1; }
  done
  if grep -E 'changed=[1-9]|failed=[1-9]' "$LOGS/$label-rerun.log" | grep -v localhost >/dev/null; then
    echo "the re-run of $label changed something: $LOGS/$label-rerun.log" >&2; exit 1
  fi
  comm -13 "$base" <(manual_packages "${hosts[@]}") >>"$installed"
  converge[$label]=$(elapsed "$t0" "$t1"); rerun[$label]=$(elapsed "$t1" "$t2")
  molecule destroy -s "$scenario" >/dev/null 2>&1; current=""
done
unset MATRIX_DEFAULT_OFFLINE

packages=$(sort -u "$installed" | tr '\n' ' ')
echo "== floor (apt-get + pip on one fresh host, no Ansible): $packages+ matrix-synapse==$SYNAPSE_VERSION"
# The floor's host: `default`'s, online (MATRIX_DEFAULT_OFFLINE=0), fresh.
export MATRIX_DEFAULT_OFFLINE=0
current=default
fresh default
t3=$(now)
floor_host=$(hosts_of default | cut -d' ' -f1)
# Not /tmp: a tmpfs in the container, which docker cp does not write into.
docker cp "$LOCK" "$floor_host:/root/synapse-lock.txt"
docker exec "$floor_host" bash -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
  python3 -m venv /opt/floor
  /opt/floor/bin/pip install -q --require-hashes --only-binary=:all: -r /root/synapse-lock.txt
" >"$LOGS/floor.log" 2>&1 || { echo "the floor failed: $LOGS/floor.log" >&2; exit 1; }
t4=$(now)
floor=$(elapsed "$t3" "$t4")

echo
printf '%-14s %16s %10s %16s %14s %16s\n' scenario "cold converge s" "re-run s" "converge/floor" "re-run/floor" "re-run/converge"
for scenario in "${SCENARIOS[@]}"; do
  python3 -c "import sys; c, r, f = map(float, sys.argv[2:]); print(f'{sys.argv[1]:<14} {c:16.1f} {r:10.1f} {c / f:16.2f} {r / f:14.2f} {r / c:16.2f}')" \
    "$scenario" "${converge[$scenario]}" "${rerun[$scenario]}" "$floor"
done
printf 'floor (same packages, apt-get + pip, one host): %s s\n' "$floor"
if [ -n "${converge[default]:-}" ] && [ -n "${converge[default-online]:-}" ]; then
  python3 -c "import sys; o, n, ro, rn = map(float, sys.argv[1:]); print(f'offline/online, one host: cold converge {o / n:.2f}, re-run {ro / rn:.2f}')" \
    "${converge[default]}" "${converge[default-online]}" "${rerun[default]}" "${rerun[default-online]}"
fi
printf 'logs: %s\n' "$LOGS"
