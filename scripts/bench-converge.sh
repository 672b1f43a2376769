#!/usr/bin/env bash
# Cold converge against its floor, side by side in one run, on the same image:
#   1. molecule scenario `default` (whole stack on one host): cold converge,
#      then the idempotent re-run;
#   2. a fresh container of the same scenario where the same packages (the
#      exact apt packages the converge installed, read back from dpkg) and the
#      same Synapse release are installed with apt-get and pip, no Ansible.
# Prints seconds and the ratios converge/floor and re-run/converge.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
# shellcheck disable=SC1091
source .venv/bin/activate

HOST=matrix-aio
SCENARIO=default
SYNAPSE_VERSION=$(python3 -c 'import yaml; print(yaml.safe_load(open("roles/synapse/defaults/main.yml"))["synapse_version"])')

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }

fresh_host() {
  molecule destroy -s "$SCENARIO" >/dev/null 2>&1 || true
  molecule create -s "$SCENARIO" >/dev/null
  molecule prepare -s "$SCENARIO" --force >/dev/null
}

trap 'molecule destroy -s "$SCENARIO" >/dev/null 2>&1 || true' EXIT

echo "== converge (Ansible, scenario $SCENARIO)"
fresh_host
base_packages=$(docker exec "$HOST" apt-mark showmanual | sort)
t0=$(now); molecule converge -s "$SCENARIO" >/tmp/bench-converge.log 2>&1; t1=$(now)
molecule converge -s "$SCENARIO" >/tmp/bench-rerun.log 2>&1; t2=$(now)
grep -q 'changed=0.*failed=0' /tmp/bench-rerun.log || { echo "re-run was not idempotent, see /tmp/bench-rerun.log" >&2; exit 1; }
packages=$(comm -13 <(echo "$base_packages") <(docker exec "$HOST" apt-mark showmanual | sort) | tr '\n' ' ')

echo "== floor (apt-get + pip, no Ansible): $packages+ matrix-synapse==$SYNAPSE_VERSION"
fresh_host
t3=$(now)
docker exec "$HOST" bash -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
  python3 -m venv --system-site-packages /opt/floor
  /opt/floor/bin/pip install -q 'matrix-synapse[postgres]==$SYNAPSE_VERSION'
" >/tmp/bench-floor.log 2>&1
t4=$(now)

converge=$(elapsed "$t0" "$t1"); rerun=$(elapsed "$t1" "$t2"); floor=$(elapsed "$t3" "$t4")
printf '\n%-34s %8s s\n' "cold converge (site.yml, 1 host)" "$converge" \
  "idempotent re-run" "$rerun" "floor: same packages, no Ansible" "$floor"
python3 -c "print(f'converge / floor   = {$converge / $floor:.2f}'); print(f're-run / converge  = {$rerun / $converge:.2f}')"
