#!/usr/bin/env bash
# Start and stop QEMU test VMs (software emulation, TCG) for the Molecule `vm` scenarios; called
# by molecule/shared/vm-create.yml and vm-destroy.yml, usable by hand. docs/testing.md explains.
#
#   scripts/vm.sh start NAME DIR PUBKEY   boot VM NAME: overlay, pidfile, console log in DIR;
#                                         PUBKEY becomes the admin's authorized_keys (fw_cfg).
#                                         Prints key=value lines: pid, ssh_address, ssh_port,
#                                         address, image. A VM already running from DIR is left
#                                         as it is.
#   scripts/vm.sh stop DIR                stop the VM started in DIR (by its pidfile)
#   scripts/vm.sh status DIR              exit 0 when the VM of DIR runs
#
# Settings (environment): VM_MEMORY (MiB, 2048), VM_CPUS (2), and the network:
#   VM_BRIDGE, VM_ADDRESS (CIDR), VM_GATEWAY   a tap NIC on that host bridge (the Molecule VM
#       scenarios use a Docker network's bridge, whose NAT gives the VM the host's way to the
#       package mirrors), with this static address (handed to the guest through fw_cfg). The VM
#       is then a host of a private network like the test containers: the controller reaches
#       every port of it, ssh included, at VM_ADDRESS, and the VM sees the controller as its
#       gateway. The tap is deleted by `stop`.
#   none of them (by hand)   QEMU's user-mode NIC: the guest is 10.0.2.15 behind NAT, only ssh
#       is reachable, forwarded from 127.0.0.1:<free port>.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

VM_MEMORY="${VM_MEMORY:-2048}"
VM_CPUS="${VM_CPUS:-2}"
VM_BRIDGE="${VM_BRIDGE:-}"
VM_ADDRESS="${VM_ADDRESS:-}"
VM_GATEWAY="${VM_GATEWAY:-}"
# Kernel command line: AppArmor and audit on from the start (kernel-level controls are what the
# VMs are for).
VM_APPEND="root=/dev/vda rw console=ttyS0 apparmor=1 security=apparmor audit=1"
FW_PREFIX="opt/org.matrix-ansible"

usage() { sed -n '5,11p' "$0" >&2; exit 2; }

# The PID in DIR/qemu.pid when it is a live QEMU started for DIR (never a recycled PID).
vm_pid() {
  local dir="$1" pid
  [ -s "${dir}/qemu.pid" ] || return 1
  pid="$(cat "${dir}/qemu.pid")"
  [ -r "/proc/${pid}/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -q "qemu-system-x86_64 .*${dir}/overlay.qcow2" || return 1
  printf '%s\n' "$pid"
}

listening() {  # listening PROTO ADDRESS PORT: true when ADDRESS:PORT (or the wildcard) is bound
  local flag=t
  [ "$1" = udp ] && flag=u
  ss -Hln"${flag}" "sport = :${3}" 2>/dev/null \
    | awk -v a="$2:$3" -v p=":$3" '$4 == a || $4 == "0.0.0.0" p || $4 == "*" p || $4 == "[::]" p { f = 1 }
                                   END { exit !f }'
}

free_ssh_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    listening tcp 127.0.0.1 "$port" || { printf '%s\n' "$port"; return 0; }
  done
  die "no free port for ssh found"
}

# The tap device of the VM started from DIR: a stable name of at most 15 characters.
tap_name() {
  printf 'mvt%s\n' "$(printf '%s' "$1" | sha256sum | cut -c1-10)"
}

cmd_start() {
  local name="$1" dir="$2" pubkey="$3" image pid ssh_address ssh_port address tap netdev own_nice
  [ -r "$pubkey" ] || die "public key ${pubkey} not readable"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid="$(vm_pid "$dir")"; then
    log "VM ${name} already runs (pid ${pid})"
    cat "${dir}/vm.env"
    return 0
  fi
  need_root
  apt_install qemu-system-x86 qemu-utils iproute2
  image="$("$(dirname "$0")/build-vm-image.sh" | tail -n 1)"
  [ -f "${image}/base.qcow2" ] || die "no VM image in ${image}"

  # Fresh overlay for each boot from scratch: the base image is never written.
  rm -f "${dir}/overlay.qcow2" "${dir}/console.log" "${dir}/qemu.pid"
  qemu-img create -q -f qcow2 -F qcow2 -b "${image}/base.qcow2" "${dir}/overlay.qcow2"

  printf '%s' "$name" >"${dir}/hostname"
  netdev=()
  if [ -n "$VM_BRIDGE" ]; then
    if [ -z "$VM_ADDRESS" ] || [ -z "$VM_GATEWAY" ]; then
      die "VM_BRIDGE needs VM_ADDRESS (CIDR) and VM_GATEWAY"
    fi
    ip link show "$VM_BRIDGE" >/dev/null 2>&1 || die "bridge ${VM_BRIDGE} does not exist"
    tap="$(tap_name "$dir")"
    ip link del "$tap" 2>/dev/null || true
    ip tuntap add dev "$tap" mode tap
    ip link set "$tap" master "$VM_BRIDGE"
    ip link set "$tap" up
    printf '%s\n' "$tap" >"${dir}/tap"
    # systemd-networkd reads it before its DHCP default (vm-firstboot, build-vm-image.sh).
    printf '[Match]\nName=en* eth*\n\n[Network]\nAddress=%s\nGateway=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
      "$VM_ADDRESS" "$VM_GATEWAY" >"${dir}/network"
    netdev=(-netdev "tap,id=net0,ifname=${tap},script=no,downscript=no"
            -fw_cfg "name=${FW_PREFIX}/network,file=${dir}/network")
    ssh_address="${VM_ADDRESS%/*}"
    ssh_port=22
    address="$ssh_address"
  else
    # The ssh port is picked and bound under one lock, so that concurrent starts do not pick the
    # same.
    exec 8>"${CACHE_DIR}/vm/.ports.lock"
    flock 8
    ssh_address=127.0.0.1
    ssh_port="$(free_ssh_port)"
    address=10.0.2.15
    netdev=(-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:${ssh_port}-:22")
  fi
  log "starting VM ${name}: ssh ${ssh_address}:${ssh_port}"
  # cache=unsafe: a throw-away test disk; guest flushes are not worth their cost under TCG.
  # tb-size: 1 GiB of translated code. Every Ansible module is a fresh Python process, whose
  # translations survive in a large buffer: 20 module runs with become (15 stat, 5 copy) on the
  # converged vm-baseline VM took 87-109 s at 1024 MiB, 118-119 s at 256 (docs/testing.md,
  # "The whole test command, per scenario", session 11).
  local accel=(-accel tcg,thread=multi,tb-size=1024)
  if hardware_virtualisation; then accel=(-accel kvm); fi
  qemu-system-x86_64 \
    -name "$name" \
    -machine q35 \
    "${accel[@]}" \
    -cpu max -m "$VM_MEMORY" -smp "$VM_CPUS" \
    -kernel "${image}/vmlinuz" -initrd "${image}/initrd.img" -append "$VM_APPEND" \
    -drive "file=${dir}/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
    "${netdev[@]}" -device virtio-net-pci,netdev=net0 \
    -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0 \
    -fw_cfg "name=${FW_PREFIX}/authorized_keys,file=${pubkey}" \
    -fw_cfg "name=${FW_PREFIX}/hostname,file=${dir}/hostname" \
    -display none -monitor none -serial "file:${dir}/console.log" \
    -daemonize -pidfile "${dir}/qemu.pid" \
    >"${dir}/qemu.log" 2>&1 8>&- \
    || { cat "${dir}/qemu.log" >&2; die "QEMU failed to start ${name}"; }
  exec 8>&-
  pid="$(vm_pid "$dir")" || die "QEMU did not stay up (see ${dir}/console.log)"
  # -daemonize starts a new session, hence a new scheduler autogroup: at its default weight it
  # takes its equal share of the CPU against the Docker containers' cgroup and the caller's
  # session, whatever the caller's nice value (an emulated VM always has work). Give the
  # autogroup the caller's niceness so that `nice scripts/vm.sh start` means it (scripts/test.sh
  # runs the VM scenario at nice 10 beside the container scenarios).
  own_nice="$(nice)"
  if [ "$own_nice" -gt 0 ] && [ -w "/proc/${pid}/autogroup" ]; then
    echo "$own_nice" >"/proc/${pid}/autogroup" || log "could not lower the VM's CPU priority"
  fi
  printf 'pid=%s\nssh_address=%s\nssh_port=%s\naddress=%s\nimage=%s\n' \
    "$pid" "$ssh_address" "$ssh_port" "$address" "$image" \
    | tee "${dir}/vm.env"
}

cmd_stop() {
  local dir="$1" pid
  [ -d "$dir" ] || return 0
  dir="$(cd "$dir" && pwd)"
  if pid="$(vm_pid "$dir")"; then
    log "stopping VM of ${dir} (pid ${pid})"
    kill "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  fi
  rm -f "${dir}/qemu.pid"
  if [ -s "${dir}/tap" ]; then
    ip link del "$(cat "${dir}/tap")" 2>/dev/null || true
    rm -f "${dir}/tap"
  fi
}

case "${1:-}" in
  start) [ "$#" -eq 4 ] || usage; cmd_start "$2" "$3" "$4" ;;
  stop) [ "$#" -eq 2 ] || usage; cmd_stop "$2" ;;
  status) [ "$#" -eq 2 ] || usage; vm_pid "$(cd "$2" 2>/dev/null && pwd || echo "$2")" >/dev/null ;;
  *) usage ;;
esac
