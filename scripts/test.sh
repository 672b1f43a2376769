#!/usr/bin/env bash
# The test command: set-up, lint, repository tests, then every Molecule
# scenario (converge, idempotence, verify). Usage:
#   scripts/test.sh                 everything (what .ci/run runs)
#   scripts/test.sh lint            lint only
#   scripts/test.sh scenario NAME   one Molecule scenario
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# Scenarios in the order they run: the harness itself, fast per-role
# feedback, then the full stack on one host (with the audit) and on four, then
# the host baseline on a real-kernel VM. (The whole stack on that VM, molecule/vm,
# is opt-in: `scripts/test.sh scenario vm`, over an hour under emulation.)
SCENARIOS=(harness role-hardening role-nftables role-postgresql role-coturn role-proxy default multi-host vm-baseline)

# Stop the Docker engine at the end only if this run started it.
engine_was_up=""
if docker info >/dev/null 2>&1; then engine_was_up=yes; fi
cleanup() {
  if [ -z "$engine_was_up" ] && [ "${MATRIX_KEEP_ENGINE:-}" != 1 ]; then
    "$REPO/scripts/docker-engine.sh" stop || true
  fi
}
trap cleanup EXIT

"$REPO/scripts/bootstrap.sh"
# shellcheck disable=SC1091
source "$REPO/.venv/bin/activate"

LOG=$(mktemp)
timed() {
  local label=$1; shift
  local start=$SECONDS
  echo "=== $label"
  "$@" 2>&1 | tee -a "$LOG"
  echo "=== $label: $((SECONDS - start)) s"
}

lint() {
  timed yamllint yamllint --strict .
  timed ansible-lint ansible-lint --strict
}

repository_tests() {
  # One worker per CPU (pytest-xdist): most of these tests wait on ansible-playbook runs.
  timed "repository tests" python -m pytest -q -n auto tests --ignore=tests/e2e
}

scenario() {
  timed "molecule test -s $1" molecule test -s "$1"
}

total_start=$SECONDS
case "${1:-all}" in
  lint) lint ;;
  unit) repository_tests ;;
  scenario) scenario "$2" ;;
  all)
    # The VM image (cached, keyed by its inputs) is mostly downloads and unpacking: build it in
    # the background, at low priority, while the container scenarios run. vm-baseline's create
    # waits for it (the build holds a lock) or builds it itself if this one failed.
    nice -n 10 "$REPO/scripts/build-vm-image.sh" >"$LOG.vm-image" 2>&1 &
    lint
    repository_tests
    for s in "${SCENARIOS[@]}"; do scenario "$s"; done
    ;;
  *) echo "usage: $0 [all|lint|unit|scenario NAME]" >&2; exit 2 ;;
esac
echo "=== test command total: $((SECONDS - total_start)) s"
# Every pytest run (repository tests, each scenario's verify) closes with
# "N passed"; a failure stops this script before here.
# (lint alone runs no test: grep finds nothing, which is not an error.)
passed=$({ grep -oE '[0-9]+ passed' "$LOG" || true; } | awk '{n += $1} END {print n + 0}')
rm -f "$LOG" "$LOG.vm-image"
echo "tests: $passed passed, 0 failed"
