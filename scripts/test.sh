#!/usr/bin/env bash
# The test command: set-up, lint, repository tests, then every Molecule
# scenario (converge, idempotence, verify). Usage:
#   scripts/test.sh                 everything (what .ci/run runs): lint, the harness scenario,
#                                   then the other container scenarios in two lanes at once; the
#                                   repository tests beside them; the VM scenario too when QEMU
#                                   has KVM here or MATRIX_TEST_VM=1
#   scripts/test.sh lint            lint only
#   scripts/test.sh unit            the repository tests only
#   scripts/test.sh scenario NAME   one Molecule scenario
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

# The harness scenario first (the test hosts themselves), alone; then the other container
# scenarios in two lanes at once, each lane taking the next scenario of LANE_QUEUE when its own
# ends, longest first (so that the two lanes end close together). One scenario keeps about one
# core busy (one task at a time, on its few hosts): two lanes keep both cores busy
# (docs/testing.md, "The whole test command, per scenario", session 12).
LANE_QUEUE=(multi-host default role-proxy role-postgresql role-hardening role-nftables role-coturn role-redis)
# The host baseline on a real-kernel VM runs beside them, at low priority, when QEMU can use
# KVM here, or when MATRIX_TEST_VM=1 asks for it. Under software emulation (TCG, no VT-x or
# AMD-V) it costs about a third of the run's CPU and does not fit CI's hour beside two lanes:
# run it by itself, `scripts/test.sh scenario vm-baseline` (about 40 minutes). (The whole
# stack on that VM, molecule/vm, is opt-in: `scripts/test.sh scenario vm`, over an hour under
# emulation.)
VM_SCENARIO=vm-baseline

# Stop the Docker engine at the end only if this run started it, and no other run of this
# command (from any clone: the engine is the machine's) still uses it. Each run holds a shared
# lock on one file of the machine for its whole life; the one that stops the engine must get
# it exclusively first. (Without it, a short run that had started the engine stopped it under
# a long one that began meanwhile.)
engine_lock_dir=/run/lock
[ -d "$engine_lock_dir" ] || engine_lock_dir=/tmp
exec {engine_lock}>"$engine_lock_dir/matrix-test-engine.lock"
flock -s "$engine_lock"
engine_was_up=""
if docker info >/dev/null 2>&1; then engine_was_up=yes; fi
vm_job=""
unit_job=""
cpu_job=""
lane_jobs=()
cleanup() {
  local job file scenario_name
  if [ -n "$cpu_job" ]; then kill "$cpu_job" 2>/dev/null || true; fi
  # A scenario failed (or the run was stopped) while a lane still runs one: stop the lane and
  # destroy the containers of the scenario it was running.
  for job in "${lane_jobs[@]}"; do
    if kill -0 "$job" 2>/dev/null; then
      kill -- "-$job" 2>/dev/null || true
      wait "$job" 2>/dev/null || true
    fi
  done
  for file in "${LOG:-/nonexistent}".lane?; do
    [ -f "$file" ] || continue
    scenario_name=$(cat "$file")
    if [ -f "$LOG.log.$scenario_name" ]; then
      echo "=== molecule test -s $scenario_name (stopped): its last lines"
      tail -n 60 "$LOG.log.$scenario_name"
    fi
    molecule destroy -s "$scenario_name" >/dev/null 2>&1 || true
  done
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
  if [ -n "${LOG:-}" ]; then rm -f "$LOG" "$LOG".*; fi
  if [ -z "$engine_was_up" ] && [ "${MATRIX_KEEP_ENGINE:-}" != 1 ]; then
    if flock -x -n "$engine_lock"; then
      "$REPO/scripts/docker-engine.sh" stop || true
    else
      echo "the Docker engine stays up: another run of scripts/test.sh uses it"
    fi
  fi
}
trap cleanup EXIT

# Without the lock's descriptor: the engine it may start would hold the lock as long as it runs.
"$REPO/scripts/bootstrap.sh" {engine_lock}>&-
# shellcheck disable=SC1091
source "$REPO/.venv/bin/activate"

LOG=$(mktemp)
# step_mark LABEL [SECONDS]: a step's start (or, with its seconds, its end) for the CPU report
# (scripts/ci-cpu.sh report).
step_mark() {
  echo "$(date +%s) === $1${2:+: $2 s}" >>"$LOG.steps"
}

timed() {
  local label=$1; shift
  local start=$SECONDS
  echo "=== $label"
  step_mark "$label"
  "$@" 2>&1 | tee -a "$LOG"
  echo "=== $label: $((SECONDS - start)) s"
  step_mark "$label" "$((SECONDS - start))"
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

# The next scenario of LANE_QUEUE, or nothing when none is left: one counter, under a lock,
# shared by the lanes.
next_in_queue() {
  local i
  {
    flock 9
    i=$(cat "$LOG.queue" 2>/dev/null || echo 0)
    echo $((i + 1)) >"$LOG.queue"
  } 9>>"$LOG.queue.lock"
  if [ "$i" -lt "${#LANE_QUEUE[@]}" ]; then echo "${LANE_QUEUE[$i]}"; fi
}

# lane N: scenarios from the queue, one after the other, until none is left or one fails. The
# scenario it runs is named in $LOG.laneN (for cleanup), its log goes to $LOG.log.<scenario>,
# and a line "<exit status> <scenario> <seconds>" to $LOG.done when it ends.
lane() {
  local s start rc
  while s=$(next_in_queue) && [ -n "$s" ]; do
    echo "$s" >"$LOG.lane$1"
    echo "=== lane $1: molecule test -s $s started"
    step_mark "molecule test -s $s"
    start=$SECONDS
    rc=0
    molecule test -s "$s" >"$LOG.log.$s" 2>&1 </dev/null || rc=$?
    step_mark "molecule test -s $s" "$((SECONDS - start))"
    echo "$rc $s $((SECONDS - start))" >>"$LOG.done"
    [ "$rc" -eq 0 ] || return 1
  done
  rm -f "$LOG.lane$1"
}

# The two lanes, each in its own process group (job control: cleanup stops all of one). Each
# scenario's log is printed whole when it ends, in the order they end; the first failure stops
# the run (cleanup stops the other lane and destroys its scenario's containers).
lanes() {
  local printed=0 rc s seconds alive job
  : >"$LOG.done"
  set -m
  lane 1 &
  lane_jobs+=("$!")
  lane 2 &
  lane_jobs+=("$!")
  set +m
  while true; do
    # Which lanes ran before reading what ended: a lane that ended wrote its last line first.
    alive=0
    for job in "${lane_jobs[@]}"; do
      if kill -0 "$job" 2>/dev/null; then alive=$((alive + 1)); fi
    done
    while [ "$printed" -lt "$(wc -l <"$LOG.done")" ]; do
      printed=$((printed + 1))
      read -r rc s seconds < <(sed -n "${printed}p" "$LOG.done")
      echo "=== molecule test -s $s"
      tee -a "$LOG" <"$LOG.log.$s"
      echo "=== molecule test -s $s: $seconds s"
      if [ "$rc" -ne 0 ]; then
        echo "molecule test -s $s failed (exit $rc)" >&2
        exit 1
      fi
      if [ -n "$unit_job" ] && ! kill -0 "$unit_job" 2>/dev/null; then report_repository_tests; fi
    done
    [ "$alive" -gt 0 ] || break
    sleep 5
  done
  for job in "${lane_jobs[@]}"; do wait "$job" 2>/dev/null || true; done
  lane_jobs=()
}

# The VM scenario in a full run: with KVM, or when asked for.
run_vm_scenario() {
  [ "${MATRIX_TEST_VM:-}" = 1 ] || hardware_virtualisation
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
    set -m
    if run_vm_scenario; then
      # The VM scenario (its create builds the VM image when the cache has none) at nice 5, in
      # its own process group (job control, so that cleanup can stop all of it) but in this
      # session: a new session (setsid) gets its own scheduler autogroup, where nice counts for
      # nothing against this one (QEMU's -daemonize starts one: scripts/vm.sh gives that
      # autogroup this niceness). Its log is printed when it ends.
      # shellcheck disable=SC2016  # expanded by the inner bash
      nice -n 5 bash -c 'start=$SECONDS; rc=0; molecule test -s "$1" >"$2" 2>&1 || rc=$?
        echo "$rc $((SECONDS - start))" >"$2.rc"' vm "$VM_SCENARIO" "$LOG.vm" </dev/null &
      vm_job=$!
    else
      echo "=== $VM_SCENARIO: not in this run (QEMU has no KVM here; MATRIX_TEST_VM=1 adds it," \
        "scripts/test.sh scenario $VM_SCENARIO runs it alone)"
    fi
    # The repository tests (the controller's CPU: ansible-playbook runs that stop before any host)
    # beside lint and the first scenarios; reported after the first scenario that ends once they
    # are done.
    # shellcheck disable=SC2016  # expanded by the inner bash
    bash -c 'start=$SECONDS; rc=0; "${@:2}" >"$1" 2>&1 || rc=$?
      echo "$rc $((SECONDS - start))" >"$1.rc"' unit "$LOG.unit" "${REPOSITORY_TESTS[@]}" </dev/null &
    unit_job=$!
    set +m
    lint
    scenario harness
    lanes
    if [ -n "$unit_job" ]; then report_repository_tests; fi
    if [ -n "$vm_job" ]; then
      echo "=== molecule test -s $VM_SCENARIO (started with lint, beside the container scenarios)"
      wait_start=$SECONDS
      wait "$vm_job" || true
      vm_job=""
      tee -a "$LOG" <"$LOG.vm"
      read -r vm_rc vm_time <"$LOG.vm.rc"
      echo "=== molecule test -s $VM_SCENARIO: $vm_time s, of which $((SECONDS - wait_start)) s after the container scenarios"
      [ "$vm_rc" -eq 0 ] || { echo "molecule test -s $VM_SCENARIO failed (exit $vm_rc)" >&2; exit 1; }
    fi
    kill "$cpu_job" 2>/dev/null || true
    cpu_job=""
    echo "=== CPU per step (machine-wide over each step's interval: the two lanes' steps overlap)"
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
