#!/usr/bin/env bash
# The test command: set-up, lint, repository tests, then every Molecule
# scenario (converge, idempotence, verify). Usage:
#   scripts/test.sh                 everything (what .ci/run runs; the repository tests and the
#                                   VM scenario run beside lint and the container scenarios)
#   scripts/test.sh lint            lint only
#   scripts/test.sh unit            the repository tests only
#   scripts/test.sh scenario NAME   one Molecule scenario
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# Container scenarios in the order they run: the harness itself, fast per-role feedback, then
# the full stack on one host (with the audit), on one host with no route to any registry (from
# the offline bundle), and on four.
SCENARIOS=(harness role-hardening role-nftables role-postgresql role-coturn role-redis role-proxy default multi-host)
# The host baseline on a real-kernel VM runs beside them, from the start, at low priority: the
# container scenarios leave about half of the CPU idle (they wait on package downloads and on
# services starting), and the emulated VM is CPU-bound. (The whole stack on that VM, molecule/vm,
# is opt-in: `scripts/test.sh scenario vm`, over an hour under emulation.)
VM_SCENARIO=vm-baseline

# Stop the Docker engine at the end only if this run started it.
engine_was_up=""
if docker info >/dev/null 2>&1; then engine_was_up=yes; fi
vm_job=""
unit_job=""
cpu_job=""
cleanup() {
  if [ -n "$cpu_job" ]; then kill "$cpu_job" 2>/dev/null || true; fi
  if [ -n "$unit_job" ] && kill -0 "$unit_job" 2>/dev/null; then
    kill -- "-$unit_job" 2>/dev/null || true
    wait "$unit_job" 2>/dev/null || true
  fi
  # A container scenario failed while the VM scenario still runs: stop it and destroy its VM.
  if [ -n "$vm_job" ] && kill -0 "$vm_job" 2>/dev/null; then
    kill -- "-$vm_job" 2>/dev/null || true
    wait "$vm_job" 2>/dev/null || true
    molecule destroy -s "$VM_SCENARIO" >/dev/null 2>&1 || true
  fi
  if [ -n "${LOG:-}" ]; then rm -f "$LOG" "$LOG.vm" "$LOG.vm.rc" "$LOG.unit" "$LOG.unit.rc" "$LOG.cpu" "$LOG.steps"; fi
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
  echo "$(date +%s) === $label" >>"$LOG.steps"
  "$@" 2>&1 | tee -a "$LOG"
  echo "=== $label: $((SECONDS - start)) s"
  echo "$(date +%s) === $label: $((SECONDS - start)) s" >>"$LOG.steps"
}

lint() {
  timed yamllint yamllint --strict .
  timed ansible-lint ansible-lint --strict
}

# The repository tests, one worker per CPU (pytest-xdist): most of them wait on ansible-playbook
# runs. Run alone (`unit`) or in the background of a full run.
REPOSITORY_TESTS=(python -m pytest -q -n auto tests --ignore=tests/e2e)

repository_tests() {
  timed "repository tests" "${REPOSITORY_TESTS[@]}"
}

scenario() {
  timed "molecule test -s $1" molecule test -s "$1"
}

# The repository tests of the full run, started in the background: their log, time and verdict.
report_repository_tests() {
  local rc seconds
  wait "$unit_job" || true
  unit_job=""
  echo "=== repository tests (started with lint, beside the first scenarios)"
  tee -a "$LOG" <"$LOG.unit"
  read -r rc seconds <"$LOG.unit.rc"
  echo "=== repository tests: $seconds s"
  [ "$rc" -eq 0 ] || { echo "the repository tests failed (exit $rc)" >&2; exit 1; }
}

total_start=$SECONDS
case "${1:-all}" in
  lint) lint ;;
  unit) repository_tests ;;
  scenario) scenario "$2" ;;
  all)
    # Where the CPU goes, per step (scripts/ci-cpu.sh; printed at the end): the machine is
    # CPU-bound for most of the run, so the CPU-seconds, not the wall seconds, say what a step costs.
    "$REPO/scripts/ci-cpu.sh" sample "$LOG.cpu" 5 &
    cpu_job=$!
    # The VM scenario (its create builds the VM image when the cache has none) at nice 5, in its
    # own process group (job control, so that cleanup can stop all of it) but in this session:
    # a new session (setsid) gets its own scheduler autogroup, where nice counts for nothing
    # against this one (QEMU's -daemonize starts one: scripts/vm.sh gives that autogroup this
    # niceness). The container scenarios keep most of the CPU they need (at nice 10 the starved VM
    # missed ssh's and sudo's 10 s timeouts); its log is printed when it ends.
    set -m
    # shellcheck disable=SC2016  # expanded by the inner bash
    nice -n 5 bash -c 'start=$SECONDS; rc=0; molecule test -s "$1" >"$2" 2>&1 || rc=$?
      echo "$rc $((SECONDS - start))" >"$2.rc"' vm "$VM_SCENARIO" "$LOG.vm" </dev/null &
    vm_job=$!
    # The repository tests (the controller's CPU: ansible-playbook runs that stop before any host)
    # beside lint and the first scenarios, which wait on package downloads and on services
    # starting; reported after the first scenario that ends once they are done.
    # shellcheck disable=SC2016  # expanded by the inner bash
    bash -c 'start=$SECONDS; rc=0; "${@:2}" >"$1" 2>&1 || rc=$?
      echo "$rc $((SECONDS - start))" >"$1.rc"' unit "$LOG.unit" "${REPOSITORY_TESTS[@]}" </dev/null &
    unit_job=$!
    set +m
    lint
    for s in "${SCENARIOS[@]}"; do
      scenario "$s"
      if [ -n "$unit_job" ] && ! kill -0 "$unit_job" 2>/dev/null; then report_repository_tests; fi
    done
    if [ -n "$unit_job" ]; then report_repository_tests; fi
    echo "=== molecule test -s $VM_SCENARIO (started with lint, beside the container scenarios)"
    wait_start=$SECONDS
    wait "$vm_job" || true
    vm_job=""
    tee -a "$LOG" <"$LOG.vm"
    read -r vm_rc vm_time <"$LOG.vm.rc"
    echo "=== molecule test -s $VM_SCENARIO: $vm_time s, of which $((SECONDS - wait_start)) s after the container scenarios"
    [ "$vm_rc" -eq 0 ] || { echo "molecule test -s $VM_SCENARIO failed (exit $vm_rc)" >&2; exit 1; }
    kill "$cpu_job" 2>/dev/null || true
    cpu_job=""
    echo "=== CPU per step (the VM scenario's QEMU runs beside them all)"
    "$REPO/scripts/ci-cpu.sh" report "$LOG.cpu" "$LOG.steps" || true
    ;;
  *) echo "usage: $0 [all|lint|unit|scenario NAME]" >&2; exit 2 ;;
esac
echo "=== test command total: $((SECONDS - total_start)) s"
# Every pytest run (repository tests, each scenario's verify) closes with
# "N passed"; a failure stops this script before here.
# (lint alone runs no test: grep finds nothing, which is not an error.)
passed=$({ grep -oE '[0-9]+ passed' "$LOG" || true; } | awk '{n += $1} END {print n + 0}')
echo "tests: $passed passed, 0 failed"
