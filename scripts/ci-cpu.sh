#!/usr/bin/env bash
# Where the test command's CPU goes, step by step (docs/testing.md, "The whole test command").
#
#   scripts/ci-cpu.sh sample FILE [SECONDS]   every SECONDS (5) until stopped, append to FILE:
#       epoch, the machine's busy CPU time (ticks), the Docker containers' (cpuacct, ns), the QEMU
#       VMs' (ticks, summed over the live processes)
#   scripts/ci-cpu.sh report FILE LOG         per step of LOG: wall seconds and CPU-seconds in all,
#       in the containers, in QEMU, and the rest (Ansible on the controller, pytest, Docker's
#       daemons, image builds). LOG: lines "<epoch> === <step>" and "<epoch> === <step>: N s",
#       as scripts/test.sh writes them during a full run (it samples and reports by itself), or
#       its output with each line prefixed by its epoch (`while read` and `date +%s`).
#
# Reads /proc and the cgroup v1 cpuacct hierarchy of the Docker engine (scripts/docker-engine.sh);
# changes nothing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

DOCKER_CPUACCT=/sys/fs/cgroup/cpuacct/docker/cpuacct.usage

sample() {
  local file="$1" every="${2:-5}" busy docker qemu pid ticks
  local _cpu user nice system _idle _iowait irq softirq steal _rest
  while true; do
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    busy=$((user + nice + system + irq + softirq + steal))
    docker=0
    [ -r "$DOCKER_CPUACCT" ] && docker="$(cat "$DOCKER_CPUACCT")"
    qemu=0
    for pid in $(pgrep -f qemu-system-x86_64 || true); do
      ticks="$(awk '{ print $14 + $15 }' "/proc/${pid}/stat" 2>/dev/null || echo 0)"
      qemu=$((qemu + ticks))
    done
    printf '%s %s %s %s\n' "$(date +%s)" "$busy" "$docker" "$qemu" >>"$file"
    sleep "$every"
  done
}

report() {
  local file
  for file in "$1" "$2"; do [ -r "$file" ] || die "cannot read ${file}"; done
  python3 - "$1" "$2" "$(getconf CLK_TCK)" <<'EOF'
import sys

samples_file, log_file, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [list(map(int, line.split())) for line in open(samples_file) if len(line.split()) == 4]
if len(rows) < 2:
    sys.exit("not enough samples")
# QEMU's counter is the sum over live processes: a VM that stops takes its ticks with it.
qemu, total, last = [], 0, 0
for row in rows:
    total += row[3] - last if row[3] >= last else row[3]
    last = row[3]
    qemu.append(total)


def index(t):
    return max([i for i, row in enumerate(rows) if row[0] <= t] or [0])


def line(name, a, b, wall):
    busy = (rows[b][1] - rows[a][1]) / hz
    docker = (rows[b][2] - rows[a][2]) / 1e9
    vm = (qemu[b] - qemu[a]) / hz
    print(f"{name[:44]:44} {wall:6} {busy:7.0f} {docker:7.0f} {vm:7.0f} {busy - docker - vm:7.0f}")


starts, ends = {}, {}
for text in open(log_file):
    epoch, _, rest = text.partition(" ")
    if not epoch.isdigit() or not rest.startswith("=== "):
        continue
    step = rest[4:].strip()
    if step.endswith(" s") and ": " in step:
        ends[step.rsplit(": ", 1)[0]] = int(epoch)
    else:
        starts.setdefault(step, int(epoch))
print(f"{'step':44} {'wall':>6} {'CPU':>7} {'docker':>7} {'qemu':>7} {'rest':>7}  (seconds, CPU-seconds)")
for step, start in starts.items():
    if step in ends:
        line(step, index(start), index(ends[step]), ends[step] - start)
line("all samples", 0, len(rows) - 1, rows[-1][0] - rows[0][0])
EOF
}

case "${1:-}" in
  sample) [ "$#" -ge 2 ] || die "usage: $0 sample FILE [SECONDS]"; sample "$2" "${3:-5}" ;;
  report) [ "$#" -eq 3 ] || die "usage: $0 report SAMPLES LOG"; report "$2" "$3" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
