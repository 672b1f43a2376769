#!/usr/bin/env bash
# Load benchmark (docs/capacity.md): the same Matrix load, side by side in one run, against
#   stock     stock Synapse of the toolkit's release (molecule/bench-stock: pip, its generated
#             configuration, Debian's PostgreSQL on the same host; no proxy, no hardening),
#   direct    the same deployment as monolith, its clients straight to Synapse's plain HTTP
#             listener (matrix_synapse_direct_networks: the controller only): the hardened host,
#             sandbox, firewall and the toolkit's settings, without the proxy and TLS,
#   monolith  the toolkit's whole stack on one host, Synapse as one process, through the TLS proxy
#             (molecule/bench-monolith),
#   workers   the same host with Redis and the `small` preset's workers (molecule/bench-workers).
# For each N (interleaved: stock, direct, monolith, workers, then the next N), fresh accounts and
# tests/load/matrix_load.py: N matrix-nio clients in E2EE rooms, syncing, each sending at a set
# rate. Prints the table and the ratios; keeps every run's figures in reports/.
#   scripts/bench-load.sh [--users "50 100 200"] [--rate 0.05] [--duration 60] [--room-size 10] [--keep] [--reuse]
# --keep leaves the three deployments up; --reuse runs against those a --keep run left (no new
# converge: for more runs on the same deployments).
# Traffic goes only to the three containers it creates; every loop is bounded (messages per
# client, deadlines). About 40 minutes on 2 cores for the defaults (converges included).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

USERS="50 100 200" RATE=0.05 DURATION=60 ROOM_SIZE=10 KEEP="" REUSE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --room-size) ROOM_SIZE=$2; shift 2 ;;
    --keep) KEEP=yes; shift ;;
    --reuse) REUSE=yes KEEP=yes; shift ;;
    *) die "usage: $0 [--users \"50 100 200\"] [--rate R] [--duration S] [--room-size K] [--keep] [--reuse]" ;;
  esac
done
for n in $USERS; do
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 2000 ] || die "--users: each N must be a whole number from 2 to 2000, not $n"
done

# The load generator's bounds, checked before any converge (tests/load/matrix_load.py checks
# them again).
python3 -c 'import sys; r, d, k = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
sys.exit(not (0.001 <= r <= 1 and 5 <= d <= 1800 and 2 <= k <= 100))' "$RATE" "$DURATION" "$ROOM_SIZE" 2>/dev/null ||
  die "--rate must be 0.001 to 1 (messages/s per user), --duration 5 to 1800 (s), --room-size 2 to 100"

scripts/bootstrap.sh >/dev/null 2>&1 || die "scripts/bootstrap.sh failed (run it alone to see why)"
# shellcheck disable=SC1091
source .venv/bin/activate

BENCH_SYNAPSE_VERSION=$(role_default synapse synapse_version)
export BENCH_SYNAPSE_VERSION
SCENARIOS=(bench-stock bench-monolith bench-workers)
# Each scenario's Molecule state and credentials (the staging CA, the registration secret), in a
# known place.
EPHEMERAL_ROOT=$CACHE_DIR/bench-load
# molecule_in SCENARIO COMMAND [ARGS...]: ARGS after the scenario, so that "-- ..." reaches Ansible.
molecule_in() { local s=$1 command=$2; shift 2; MOLECULE_EPHEMERAL_DIRECTORY=$EPHEMERAL_ROOT/$s molecule "$command" -s "$s" "$@"; }
container_of() { case "$1" in bench-stock) echo bench-stock ;; bench-monolith|bench-direct) echo bench-mono ;; bench-workers) echo bench-wk ;; esac; }
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=reports/bench-load-$STAMP
mkdir -p "$OUT"

cleanup() {
  [ -n "$KEEP" ] && return 0
  for s in "${SCENARIOS[@]}"; do molecule_in "$s" destroy >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

address_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

for s in "${SCENARIOS[@]}"; do
  if [ -n "$REUSE" ]; then
    [ "$(docker inspect -f '{{.State.Running}}' "$(container_of "$s")" 2>/dev/null)" = true ] && [ -d "$EPHEMERAL_ROOT/$s" ] ||
      die "--reuse: $s is not up from an earlier --keep run"
    continue
  fi
  log "$s: create, prepare, converge (Synapse $BENCH_SYNAPSE_VERSION)"
  start=$SECONDS
  { molecule_in "$s" destroy && molecule_in "$s" create && molecule_in "$s" prepare --force; } \
    >"$OUT/$s-converge.log" 2>&1 || die "$s was not created: $OUT/$s-converge.log"
  # The monolith lets the controller (its network's gateway) past the proxy, for the direct set-up.
  extra=()
  if [ "$s" = bench-monolith ]; then
    # The address of the network's bridge on this machine (IPAM.Config names no gateway when the
    # network was created with a subnet only).
    bridge=br-$(docker network inspect -f '{{.Id}}' matrix-bench-mono | cut -c1-12)
    controller=$(ip -4 -o addr show dev "$bridge" | awk '{print $4}' | cut -d/ -f1 | head -1)
    [ -n "$controller" ] || die "no address of this machine on matrix-bench-mono ($bridge)"
    extra=(-- -e "{\"matrix_synapse_direct_networks\": [\"$controller/32\"]}")
  fi
  molecule_in "$s" converge "${extra[@]}" >>"$OUT/$s-converge.log" 2>&1 || die "$s did not converge: $OUT/$s-converge.log"
  log "$s: ready in $((SECONDS - start)) s"
done

# A --reuse of a deployment converged before the direct set-up existed: say so now, not after
# the first runs.
python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
  "http://$(address_of bench-mono):8008/health" 2>/dev/null ||
  die "Synapse's listener on bench-mono does not admit the controller (the direct set-up): run without --reuse"

stock_secret=$(docker exec bench-stock /opt/stock-synapse/bin/python -c \
  'import yaml; print(yaml.safe_load(open("/etc/stock-synapse/homeserver.yaml"))["registration_shared_secret"])')

# run SETUP N: register N fresh accounts on SETUP's homeserver, then the load generator.
run() {
  local setup=$1 n=$2 container secret args=()
  container=$(container_of "bench-$setup")
  case "$setup" in
    stock)
      secret=$stock_secret
      args=(--homeserver "http://$(address_of "$container"):8008") ;;
    direct)
      secret=$(cat "$EPHEMERAL_ROOT/bench-monolith/credentials/synapse_registration_shared_secret")
      args=(--homeserver "http://$(address_of "$container"):8008") ;;
    monolith|workers)
      local credentials=$EPHEMERAL_ROOT/bench-$setup/credentials
      [ -f "$credentials/ca/ca.crt" ] || die "no staging CA at $credentials/ca/ca.crt"
      secret=$(cat "$credentials/synapse_registration_shared_secret")
      args=(--homeserver https://matrix.example.test --address "$(address_of "$container")"
            --names matrix.example.test example.test --ca "$credentials/ca/ca.crt") ;;
  esac
  local accounts=$OUT/$setup-$n-accounts.json
  docker exec -i "$container" python3 - http://127.0.0.1:8008 "$secret" "${setup}${n}u" "$n" \
    <tests/load/register_users.py >"$accounts" || die "registering $n accounts on $setup failed"
  log "$setup, N=$n: load"
  python tests/load/matrix_load.py --label "$setup" "${args[@]}" --accounts "$accounts" \
    --containers "$container" --room-size "$ROOM_SIZE" --rate "$RATE" --duration "$DURATION" \
    >>"$OUT/results.jsonl" 2>>"$OUT/load.log" || die "the load generator failed against $setup (N=$n): $OUT/load.log"
  rm -f "$accounts"
}

for n in $USERS; do
  for setup in stock direct monolith workers; do run "$setup" "$n"; done
done

python tests/load/summary.py "$OUT/results.jsonl" | tee "$OUT/summary.txt"
log "figures: $OUT"
