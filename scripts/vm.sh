#!/usr/bin/env bash
# Start and stop QEMU test VMs (software emulation, TCG) for the Molecule `vm` scenarios; called
# by molecule/shared/vm-create.yml and vm-destroy.yml, usable by hand. docs/testing.md explains.
#
#   scripts/vm.sh start NAME DIR PUBKEY   boot VM NAME: overlay, pidfile, console log in DIR;
#                                         PUBKEY becomes the admin's authorized_keys (fw_cfg).
#                                         Prints key=value lines: pid, ssh_port, service_address.
#                                         A VM already running from DIR is left as it is.
#   scripts/vm.sh stop DIR                stop the VM started in DIR (by its pidfile)
#   scripts/vm.sh status DIR              exit 0 when the VM of DIR runs
#
# Settings (environment): VM_MEMORY (MiB, 2048), VM_CPUS (2), VM_FORWARDS (the guest services
# reachable from the controller, default "tcp:80 tcp:443 tcp:8448 tcp:3478 udp:3478 tcp:5349").
#
# Network: QEMU's user-mode NIC (the guest is 10.0.2.15; connections from the host arrive from
# 10.0.2.2). SSH is forwarded from 127.0.0.1:<free port>. The service ports are forwarded with
# their own numbers from a loopback address of the VM's own (127.77.0.N, every 127/8 address is
# local on Linux), so that clients on the controller reach https://<that address>:443 unchanged.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

VM_MEMORY="${VM_MEMORY:-2048}"
VM_CPUS="${VM_CPUS:-2}"
VM_FORWARDS="${VM_FORWARDS:-tcp:80 tcp:443 tcp:8448 tcp:3478 udp:3478 tcp:5349}"
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

# A loopback address none of whose forwarded ports is taken (another VM, a local service).
free_service_address() {
  local n address fwd busy
  for n in $(seq 2 254); do
    address="127.77.0.${n}"
    busy=0
    for fwd in $VM_FORWARDS; do
      if listening "${fwd%%:*}" "$address" "${fwd#*:}"; then busy=1; break; fi
    done
    [ "$busy" -eq 0 ] && { printf '%s\n' "$address"; return 0; }
  done
  die "no free loopback address for the service ports"
}

cmd_start() {
  local name="$1" dir="$2" pubkey="$3" image pid ssh_port address hostfwd fwd
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

  # Ports are picked and bound under one lock, so that concurrent starts do not pick the same.
  exec 8>"${CACHE_DIR}/vm/.ports.lock"
  flock 8
  ssh_port="$(free_ssh_port)"
  address="$(free_service_address)"
  hostfwd="hostfwd=tcp:127.0.0.1:${ssh_port}-:22"
  for fwd in $VM_FORWARDS; do
    hostfwd="${hostfwd},hostfwd=${fwd%%:*}:${address}:${fwd#*:}-:${fwd#*:}"
  done
  printf '%s' "$name" >"${dir}/hostname"
  log "starting VM ${name}: ssh 127.0.0.1:${ssh_port}, services ${address} (${VM_FORWARDS})"
  # cache=unsafe: a throw-away test disk; guest flushes are not worth their cost under TCG.
  qemu-system-x86_64 \
    -name "$name" \
    -machine q35 \
    -accel tcg,thread=multi,tb-size=256 \
    -cpu max -m "$VM_MEMORY" -smp "$VM_CPUS" \
    -kernel "${image}/vmlinuz" -initrd "${image}/initrd.img" -append "$VM_APPEND" \
    -drive "file=${dir}/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
    -netdev "user,id=net0,${hostfwd}" -device virtio-net-pci,netdev=net0 \
    -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0 \
    -fw_cfg "name=${FW_PREFIX}/authorized_keys,file=${pubkey}" \
    -fw_cfg "name=${FW_PREFIX}/hostname,file=${dir}/hostname" \
    -display none -monitor none -serial "file:${dir}/console.log" \
    -daemonize -pidfile "${dir}/qemu.pid" \
    >"${dir}/qemu.log" 2>&1 8>&- \
    || { cat "${dir}/qemu.log" >&2; die "QEMU failed to start ${name}"; }
  exec 8>&-
  pid="$(vm_pid "$dir")" || die "QEMU did not stay up (see ${dir}/console.log)"
  printf 'pid=%s\nssh_port=%s\nservice_address=%s\nimage=%s\n' "$pid" "$ssh_port" "$address" "$image" \
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
}

case "${1:-}" in
  start) [ "$#" -eq 4 ] || usage; cmd_start "$2" "$3" "$4" ;;
  stop) [ "$#" -eq 2 ] || usage; cmd_stop "$2" ;;
  status) [ "$#" -eq 2 ] || usage; vm_pid "$(cd "$2" 2>/dev/null && pwd || echo "$2")" >/dev/null ;;
  *) usage ;;
esac
