#!/usr/bin/env bash
# Build (or reuse from cache) the Debian 12 disk image of the QEMU test VMs (molecule/vm,
# docs/testing.md "Real virtual machines"). Debian packages only, from the host's own apt sources.
#
#   scripts/build-vm-image.sh            prints the image directory (.cache/vm/debian12-<hash>/:
#                                        base.qcow2, vmlinuz, initrd.img); builds it when absent
#   scripts/build-vm-image.sh --force    rebuild from scratch
#
# <hash> covers everything the image is made of: this script, the host's apt sources and apt
# settings, its static /etc/hosts entries and extra CA certificates. Change any of them and the
# next run builds a new image instead of reusing a stale one. The admin's ssh key is NOT in the
# image: scripts/vm.sh hands each VM the per-run public key through QEMU's fw_cfg, and a first-boot
# unit installs it (with the hostname), then regenerates the ssh host keys.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

SUITE="bookworm"
IMAGE_SUITES="bookworm bookworm-updates bookworm-security"
DISK_SIZE="${VM_DISK_SIZE:-6G}"
# The unprivileged account Ansible connects as (become through sudo); root cannot log in over ssh.
ADMIN_USER="${VM_ADMIN_USER:-matrixadmin}"
PACKAGES="linux-image-amd64,initramfs-tools,systemd-sysv,dbus,libpam-systemd,openssh-server,\
python3,python3-apt,sudo,ca-certificates,apparmor,iproute2,procps,kmod"
VM_ROOT="${CACHE_DIR}/vm"

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

ENTRIES="$(host_apt_entries | awk -v want=" ${IMAGE_SUITES} " 'index(want, " " $2 " ") > 0' | awk '!seen[$1 " " $2]++')"
MIRROR="$(printf '%s\n' "$ENTRIES" | awk -v s="$SUITE" '$2 == s { print $1; exit }')"
[ -n "$MIRROR" ] || die "no '${SUITE}' entry found in the host's apt sources (/etc/apt/sources.list[.d])"
APT_OPTIONS="$(host_apt_options)"
STATIC_HOSTS="$(host_static_hosts)"

inputs() {
  cat "$0"
  printf '%s\n--\n%s\n--\n%s\n--\n' "$ENTRIES" "$APT_OPTIONS" "$STATIC_HOSTS"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    (cd /usr/local/share/ca-certificates && find . -type f -print0 | sort -z | xargs -0 sha256sum)
  fi
}
BUILD_HASH="$(inputs | sha256sum | cut -c1-12)"
IMAGE_DIR="${VM_ROOT}/debian12-${BUILD_HASH}"

# One build at a time; whoever waited finds the image ready.
mkdir -p "$VM_ROOT"
exec 9>"${VM_ROOT}/.build.lock"
if ! flock -n 9; then
  log "another build of the VM image is running; waiting for it"
  flock 9
fi

if [ "$FORCE" -eq 0 ] && [ -f "${IMAGE_DIR}/.complete" ]; then
  log "VM image ${IMAGE_DIR} is current (hash ${BUILD_HASH}); nothing to do"
  printf '%s\n' "$IMAGE_DIR"
  exit 0
fi

need_root
apt_install mmdebstrap debian-archive-keyring e2fsprogs qemu-utils

BUILD_DIR="${VM_ROOT}/build-${BUILD_HASH}"
ROOTFS="${BUILD_DIR}/rootfs"
cleanup() {
  if [ -d "$BUILD_DIR" ]; then
    awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$BUILD_DIR"
  fi
}
trap cleanup EXIT
cleanup
mkdir -p "$BUILD_DIR"

start=$SECONDS
log "mmdebstrap ${SUITE} (important + ${PACKAGES}) from ${MIRROR}; takes a minute or two"
APTOPT_ARGS=()
while IFS= read -r line; do
  [ -n "$line" ] && APTOPT_ARGS+=("--aptopt=${line}")
done <<<"$APT_OPTIONS"
SOURCES=()
while read -r uri suite comps; do
  [ -n "$uri" ] && SOURCES+=("deb ${uri} ${suite} ${comps:-main}")
done <<<"$ENTRIES"
if ! mmdebstrap --mode=root --variant=important --components=main --include="$PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Languages "none"' \
    "${APTOPT_ARGS[@]}" --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$ROOTFS" "${SOURCES[@]}" >"${BUILD_DIR}/mmdebstrap.log" 2>&1; then
  tail -n 40 "${BUILD_DIR}/mmdebstrap.log" >&2
  die "mmdebstrap failed"
fi
log "mmdebstrap done in $((SECONDS - start))s"

# --- Apt: the host's mirrors (one-line sources written by mmdebstrap), no recommends.
printf '%s\n' "$APT_OPTIONS" >"$ROOTFS/etc/apt/apt.conf.d/90host-mirror"
[ -n "$APT_OPTIONS" ] || rm -f "$ROOTFS/etc/apt/apt.conf.d/90host-mirror"
cat >"$ROOTFS/etc/apt/apt.conf.d/90vm-image" <<'APT'
APT::Install-Recommends "false";
Acquire::Languages "none";
APT

# --- Root file system on the whole virtio disk (direct kernel boot: no partition table, no GRUB).
cat >"$ROOTFS/etc/fstab" <<'FSTAB'
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/vda / ext4 rw,errors=remount-ro 0 1
FSTAB

# --- Network: systemd-networkd, DHCP from QEMU's user-mode network (10.0.2.0/24; the host is
# 10.0.2.2, QEMU's DNS forwarder 10.0.2.3), unless scripts/vm.sh hands a static configuration
# through fw_cfg (a tap NIC on a bridge): vm-firstboot writes it as 05-fw-cfg.network, read first.
mkdir -p "$ROOTFS/etc/systemd/network"
cat >"$ROOTFS/etc/systemd/network/10-vm.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
ln -sfn /lib/systemd/system/systemd-networkd.service \
  "$ROOTFS/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
printf 'nameserver 10.0.2.3\n' >"$ROOTFS/etc/resolv.conf"
printf 'debian\n' >"$ROOTFS/etc/hostname"
{
  printf '127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost ip6-loopback\n'
  printf 'ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n'
  if [ -n "$STATIC_HOSTS" ]; then
    printf '# controller static entries (scripts/build-vm-image.sh)\n%s\n' "$STATIC_HOSTS"
  fi
} >"$ROOTFS/etc/hosts"

# --- The host's extra CA certificates (TLS-intercepting proxies in front of the registries).
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the image"

# --- The admin account: unprivileged, key-only (no password), sudo without password so that
# Ansible's become needs no secret in the test harness (an operator's host would use a password
# or its own policy). Root has no password and may not log in over ssh.
chroot "$ROOTFS" useradd --create-home --shell /bin/bash --groups sudo --comment "Matrix admin (test VM)" "$ADMIN_USER"
chroot "$ROOTFS" usermod --password '*' "$ADMIN_USER"
chroot "$ROOTFS" usermod --password '*' root
install -d -m 0700 "$ROOTFS/home/${ADMIN_USER}/.ssh"
chroot "$ROOTFS" chown "${ADMIN_USER}:${ADMIN_USER}" "/home/${ADMIN_USER}/.ssh"
printf '# Test VM image (scripts/build-vm-image.sh): the Ansible admin account.\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n' \
  "$ADMIN_USER" >"$ROOTFS/etc/sudoers.d/90-vm-admin"
chmod 0440 "$ROOTFS/etc/sudoers.d/90-vm-admin"
chroot "$ROOTFS" visudo -cqf /etc/sudoers.d/90-vm-admin || die "sudoers drop-in does not validate"
# A high number: sshd keeps the FIRST value it reads, so the hardening role's own drop-ins
# (lower numbers) win over these image defaults.
cat >"$ROOTFS/etc/ssh/sshd_config.d/90-vm-image.conf" <<'SSHD'
# Test VM image (scripts/build-vm-image.sh): keys only, no root login.
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
SSHD

# --- First boot: the per-run admin key, the hostname and the network from QEMU's fw_cfg
# (scripts/vm.sh), new ssh host keys (the image carries none).
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
cat >"$ROOTFS/usr/local/sbin/vm-firstboot" <<FIRSTBOOT
#!/bin/sh
# Installed by scripts/build-vm-image.sh; runs once, before sshd (vm-firstboot.service).
set -eu
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/org.matrix-ansible
modprobe qemu_fw_cfg 2>/dev/null || true
if [ -r "\$fw/authorized_keys/raw" ]; then
  install -d -m 0700 -o ${ADMIN_USER} -g ${ADMIN_USER} /home/${ADMIN_USER}/.ssh
  cat "\$fw/authorized_keys/raw" >/home/${ADMIN_USER}/.ssh/authorized_keys
  chown ${ADMIN_USER}:${ADMIN_USER} /home/${ADMIN_USER}/.ssh/authorized_keys
  chmod 0600 /home/${ADMIN_USER}/.ssh/authorized_keys
fi
if [ -r "\$fw/network/raw" ]; then
  cat "\$fw/network/raw" >/etc/systemd/network/05-fw-cfg.network
  chmod 0644 /etc/systemd/network/05-fw-cfg.network
fi
if [ -r "\$fw/hostname/raw" ]; then
  name=\$(tr -cd 'A-Za-z0-9.-' <"\$fw/hostname/raw")
  if [ -n "\$name" ]; then
    printf '%s\n' "\$name" >/etc/hostname
    hostname "\$name"
    sed -i "s/^127\.0\.1\.1 .*/127.0.1.1 \$name/" /etc/hosts
  fi
fi
ssh-keygen -A
mkdir -p /var/lib/vm-firstboot
touch /var/lib/vm-firstboot/done
FIRSTBOOT
chmod 0755 "$ROOTFS/usr/local/sbin/vm-firstboot"
cat >"$ROOTFS/etc/systemd/system/vm-firstboot.service" <<'UNIT'
[Unit]
Description=Test VM first boot: admin key, hostname and network from fw_cfg, new ssh host keys
After=local-fs.target
Before=network-pre.target ssh.service
Wants=network-pre.target
ConditionPathExists=!/var/lib/vm-firstboot/done

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vm-firstboot

[Install]
WantedBy=multi-user.target
UNIT
ln -sfn /etc/systemd/system/vm-firstboot.service \
  "$ROOTFS/etc/systemd/system/multi-user.target.wants/vm-firstboot.service"

# --- apt-daily*: not "catch up" at boot (Persistent=false): a fresh VM would otherwise run
# apt-get update/upgrade in the middle of the first converge and hold the apt lock.
for timer in apt-daily.timer apt-daily-upgrade.timer; do
  mkdir -p "$ROOTFS/etc/systemd/system/${timer}.d"
  printf '[Timer]\nPersistent=false\n' >"$ROOTFS/etc/systemd/system/${timer}.d/10-vm-image.conf"
done

# --- Each VM gets its own machine-id at first boot.
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"

# --- No stale package lists (dated 1970: `apt: update_cache: true, cache_valid_time: N` refreshes).
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
touch -d @0 "$ROOTFS/var/lib/apt/lists"
rm -rf "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*

# --- Kernel and initramfs for direct kernel boot, then the disk.
KERNEL="$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)"
INITRD="$(find "$ROOTFS/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)"
if [ -z "$KERNEL" ] || [ -z "$INITRD" ]; then die "no kernel/initramfs in the image's /boot"; fi
cp "$KERNEL" "${BUILD_DIR}/vmlinuz"
cp "$INITRD" "${BUILD_DIR}/initrd.img"
log "mkfs.ext4 -d (${DISK_SIZE})"
mkfs.ext4 -q -F -L vm-root -d "$ROOTFS" "${BUILD_DIR}/disk.raw" "$DISK_SIZE"
qemu-img convert -f raw -O qcow2 "${BUILD_DIR}/disk.raw" "${BUILD_DIR}/base.qcow2"
rm -f "${BUILD_DIR}/disk.raw"

rm -rf "$IMAGE_DIR"
mkdir -p "$IMAGE_DIR"
mv "${BUILD_DIR}/base.qcow2" "${BUILD_DIR}/vmlinuz" "${BUILD_DIR}/initrd.img" "$IMAGE_DIR/"
chmod 0444 "$IMAGE_DIR/base.qcow2"
printf 'hash=%s\nadmin_user=%s\nbuilt=%s\n' "$BUILD_HASH" "$ADMIN_USER" "$(date -u +%FT%TZ)" >"$IMAGE_DIR/.complete"
# Older images (other hashes) are no longer used; a VM still running from one keeps its open file.
find "$VM_ROOT" -maxdepth 1 -type d -name 'debian12-*' ! -path "$IMAGE_DIR" -exec rm -rf {} +
log "built ${IMAGE_DIR} in $((SECONDS - start))s ($(du -h "$IMAGE_DIR/base.qcow2" | cut -f1) qcow2)"
printf '%s\n' "$IMAGE_DIR"
