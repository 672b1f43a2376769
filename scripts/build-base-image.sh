#!/usr/bin/env bash
# Build (or load from cache) the local base image for Molecule test hosts:
#   matrix-ansible/debian12-systemd:bookworm
# Debian 12 with systemd as PID 1, built with debootstrap from the host's own Debian mirror
# (there is no container registry). See docs/testing.md.
#
#   scripts/build-base-image.sh            image present and current -> nothing to do;
#                                          cached tarball present -> docker load;
#                                          otherwise debootstrap, import, save to the cache
#   scripts/build-base-image.sh --force    rebuild from scratch
#
# The image carries the label org.matrix-ansible.build-hash=<hash of this script and lib.sh>;
# the cache file .cache/images/<name>-<hash>.tar.gz has the same hash, so editing either
# rebuilds the image instead of reusing a stale one.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

IMAGE="${BASE_IMAGE:-matrix-ansible/debian12-systemd:bookworm}"
SUITE="bookworm"
# Only these suites are copied from the host's apt sources into the image.
IMAGE_SUITES="bookworm bookworm-updates bookworm-security"
PACKAGES="systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates"
# Units that cannot work in a container or fight with the tests (apt-daily* take the apt lock
# at random times).
MASK_UNITS="systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
  systemd-udev-trigger.service systemd-udev-settle.service
  getty.target getty@.service serial-getty@.service console-getty.service
  systemd-remount-fs.service systemd-modules-load.service systemd-firstboot.service
  apt-daily.timer apt-daily-upgrade.timer"

# The image is built by this script and the helpers it sources: both make the hash.
BUILD_HASH="$(cat "$0" "$(dirname "$0")/lib.sh" | sha256sum | cut -c1-12)"
IMAGES_DIR="${CACHE_DIR}/images"
CACHE_PREFIX="${IMAGES_DIR}/$(printf '%s' "$IMAGE" | tr '/:' '__')"
CACHE_FILE="${CACHE_PREFIX}-${BUILD_HASH}.tar.gz"
LABEL_KEY="org.matrix-ansible.build-hash"

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

docker_answers || die "no Docker engine answers: run scripts/docker-engine.sh start"

# One build at a time (several helpers or CI jobs may bootstrap at once); whoever waited finds
# the image ready below.
mkdir -p "$IMAGES_DIR"
exec 9>"${IMAGES_DIR}/.lock"
if ! flock -n 9; then
  log "another build of ${IMAGE} is running; waiting for it"
  flock 9
fi

image_hash() {
  docker image inspect --format "{{ index .Config.Labels \"${LABEL_KEY}\" }}" "$IMAGE" 2>/dev/null || true
}

if [ "$FORCE" -eq 0 ]; then
  if [ "$(image_hash)" = "$BUILD_HASH" ]; then
    log "image ${IMAGE} is present and current (build hash ${BUILD_HASH}); nothing to do"
    exit 0
  fi
  if [ -s "$CACHE_FILE" ]; then
    log "loading ${IMAGE} from ${CACHE_FILE}"
    start=$SECONDS
    gzip -dc "$CACHE_FILE" | docker load >/dev/null
    if [ "$(image_hash)" = "$BUILD_HASH" ]; then
      log "loaded in $((SECONDS - start))s"
      exit 0
    fi
    log "cached tarball did not yield the expected image; rebuilding"
  fi
fi

# ---------------------------------------------------------------------------------------------
# Build from scratch.
need_root
apt_install debootstrap debian-archive-keyring

# host_apt_entries (scripts/lib.sh): "URI SUITE COMPONENTS..." of the host's enabled deb entries.
ENTRIES="$(host_apt_entries | awk -v want=" ${IMAGE_SUITES} " 'index(want, " " $2 " ") > 0')"
MIRROR="$(printf '%s\n' "$ENTRIES" | awk -v s="$SUITE" '$2 == s { print $1; exit }')"
[ -n "$MIRROR" ] || die "no '${SUITE}' entry found in the host's apt sources (/etc/apt/sources.list[.d])"
log "mirror from the host's apt sources: ${MIRROR}"

BUILD_DIR="${CACHE_DIR}/build"
ROOTFS="${BUILD_DIR}/rootfs"

cleanup_rootfs() {
  # debootstrap mounts proc/sys inside the target: unmount before deleting anything.
  if [ -d "$ROOTFS" ]; then
    awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
  fi
}
trap cleanup_rootfs EXIT
cleanup_rootfs
mkdir -p "$ROOTFS"

start=$SECONDS
log "debootstrap ${SUITE} (minbase + ${PACKAGES}); takes a few minutes"
if ! debootstrap --variant=minbase --components=main --include="$PACKAGES" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"${BUILD_DIR}/debootstrap.log" 2>&1; then
  tail -n 30 "${BUILD_DIR}/debootstrap.log" >&2
  [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (see ${BUILD_DIR}/debootstrap.log)"
fi
log "debootstrap done in $((SECONDS - start))s"

# Apt sources: the host's entries for the image's suites, so apt inside uses the same mirrors.
rm -f "$ROOTFS/etc/apt/sources.list"
printf '%s\n' "$ENTRIES" | awk '
  { key = $1 " " $2; if (seen[key]++) next
    comps = ""; for (i = 3; i <= NF; i++) comps = comps (comps == "" ? "" : " ") $i
    if (comps == "") comps = "main"
    printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n", $1, $2, comps }
' >"$ROOTFS/etc/apt/sources.list.d/debian.sources"
# Carry over the host's apt settings that make its mirrors usable (snapshot mirrors with expired
# Release files, proxies).
apt-config dump 2>/dev/null \
  | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|https?::proxy) ' \
  >"$ROOTFS/etc/apt/apt.conf.d/90host-mirror" || true
[ -s "$ROOTFS/etc/apt/apt.conf.d/90host-mirror" ] || rm -f "$ROOTFS/etc/apt/apt.conf.d/90host-mirror"
# Keep containers small and quiet: no recommends, no translations.
cat >"$ROOTFS/etc/apt/apt.conf.d/90container" <<'APT'
APT::Install-Recommends "false";
Acquire::Languages "none";
APT

# systemd in a container: mask what needs real hardware or a console.
for unit in $MASK_UNITS; do
  ln -sfn /dev/null "$ROOTFS/etc/systemd/system/$unit"
done

# Each container gets its own machine-id at boot.
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"

# The host's extra CA certificates (TLS-intercepting proxies, private registries).
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 \
  || die "update-ca-certificates failed inside the image"

# No stale package lists: dated 1970 so `apt: update_cache: true, cache_valid_time: N` always
# refreshes them in a new container.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
touch -d @0 "$ROOTFS/var/lib/apt/lists"
rm -rf "$ROOTFS/debootstrap" "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*

log "importing ${IMAGE}"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . \
  | docker import \
      --change 'CMD ["/lib/systemd/systemd"]' \
      --change 'ENV container=docker' \
      --change "LABEL ${LABEL_KEY}=${BUILD_HASH}" \
      - "$IMAGE" >/dev/null
cleanup_rootfs

log "saving cache ${CACHE_FILE}"
rm -f "${CACHE_PREFIX}"-*.tar.gz
docker save "$IMAGE" | gzip -1 >"${CACHE_FILE}.part"
mv "${CACHE_FILE}.part" "$CACHE_FILE"
log "built ${IMAGE} in $((SECONDS - start))s ($(du -h "$CACHE_FILE" | cut -f1) cached)"
