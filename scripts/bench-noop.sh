#!/usr/bin/env bash
# No-op re-runs of two revisions side by side on one converged host.
#   scripts/bench-noop.sh BASE_REV [ROUNDS]      (ROUNDS: default 2)
# One fresh `bench-monolith` host (the whole stack on one host, online) converged by this
# checkout; then ROUNDS alternating no-op re-runs of playbooks/site.yml, BASE_REV's first
# (a git worktree of BASE_REV in a temporary folder, sharing this checkout's .venv and
# .cache), then this checkout's, each under /usr/bin/time with Ansible's profile_tasks. Prints
# each run's wall time, its ok and changed counts, the controller's CPU-s, and the ratio
# this/base of the mean wall times. A run that fails stops the script. Traffic: the controller
# and its own container only. Not part of the test command (docs/capacity.md, "Fast re-runs").
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BASE_REV [ROUNDS]" >&2; exit 2; }
REPO=$PWD
BASE_REV=$(git rev-parse --verify "$1^{commit}")
ROUNDS=${2:-2}
scripts/bootstrap.sh >/dev/null 2>&1
# shellcheck disable=SC1091
source .venv/bin/activate
# shellcheck source=lib.sh
. scripts/lib.sh

SCENARIO=bench-monolith
# The backup settings name the toolkit's revision (git describe): the same name for both, so that
# a re-run changes nothing whichever revision ran before.
SAME_VERSION='{"backup_toolkit_version": "bench-noop"}'
LOGS=$(mktemp -d)
BASE=$(mktemp -d)/base
# Both revisions drive the same host: one Molecule state folder for both checkouts.
export MOLECULE_EPHEMERAL_DIRECTORY="$LOGS/molecule"
cleanup() {
  molecule destroy -s "$SCENARIO" >/dev/null 2>&1 || true
  git -C "$REPO" worktree remove --force "$BASE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

git worktree add --detach "$BASE" "$BASE_REV" >/dev/null 2>&1
ln -s "$REPO/.venv" "$BASE/.venv"
ln -s "$REPO/.cache" "$BASE/.cache"

log "fresh $SCENARIO host, converged by $(git describe --always --dirty)"
molecule destroy -s "$SCENARIO" >/dev/null 2>&1 || true
molecule create -s "$SCENARIO" >"$LOGS/create.log" 2>&1
molecule prepare -s "$SCENARIO" --force >"$LOGS/prepare.log" 2>&1
molecule converge -s "$SCENARIO" -- -e "$SAME_VERSION" >"$LOGS/converge.log" 2>&1 || die "the converge failed: $LOGS/converge.log"

# rerun LABEL DIR ROUND: one no-op re-run from checkout DIR; prints "LABEL wall ok changed cpu".
rerun() {
  local log="$LOGS/$1-$3.log"
  (cd "$2" && ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer,ansible.posix.profile_tasks \
    PROFILE_TASKS_TASK_OUTPUT_LIMIT=all /usr/bin/time -f 'TIME %e %U %S' -o "$log.time" \
    molecule converge -s "$SCENARIO" -- -e "$SAME_VERSION") >"$log" 2>&1 || die "the re-run of $1 failed: $log"
  python3 - "$1" "$log" <<'EOF'
import re, sys
label, log = sys.argv[1:]
text = re.sub(r"\x1b\[[0-9;]*m", "", open(log, errors="replace").read())
recap = re.search(r"bench-mono\s*:\s*ok=(\d+)\s+changed=(\d+)", text)
wall, user, system = open(log + ".time").read().split()[1:4]
print(label, wall, recap.group(1), recap.group(2), f"{float(user) + float(system):.1f}")
EOF
}

results=$LOGS/results
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  rerun base "$BASE" "$round" | tee -a "$results"
  rerun this "$REPO" "$round" | tee -a "$results"
done

echo
python3 - "$results" "$(git rev-parse --short "$BASE_REV")" "$(git describe --always --dirty)" <<'EOF'
import statistics, sys
runs = [line.split() for line in open(sys.argv[1])]
print(f"{'revision':<22} {'wall s':>8} {'ok':>5} {'changed':>8} {'controller CPU-s':>17}")
for label, name in (("base", sys.argv[2]), ("this", sys.argv[3])):
    for _, wall, ok, changed, cpu in (r for r in runs if r[0] == label):
        print(f"{label + ' ' + name:<22} {float(wall):8.1f} {ok:>5} {changed:>8} {float(cpu):17.1f}")
mean = {label: statistics.mean(float(r[1]) for r in runs if r[0] == label) for label in ("base", "this")}
print(f"no-op re-run, this/base (mean wall time): {mean['this'] / mean['base']:.2f}")
EOF
printf 'logs: %s\n' "$LOGS"
