#!/usr/bin/env bash
# Builds the base images the Molecule scenarios boot, since no image registry
# can be reached: debootstrap a minimal root filesystem with systemd as PID 1
# and python3, then `docker import` it. Images are cached by tag and by a hash
# of this recipe, so a second run skips the build.
#
# Usage: images.sh [NAME ...]   (default: every image below)
source "$(dirname "$0")/common.sh"

# name | suite | debootstrap script | components | extra debootstrap flags
DISTROS=(
  "debian-12|bookworm|bookworm|main|"
  "debian-13|trixie|trixie|main|"
  "ubuntu-22.04|jammy|jammy|main,universe|--no-check-gpg"
  "ubuntu-24.04|noble|gutsy|main,universe|--no-check-gpg"
)
# Packages every test host gets: what Ansible and the checks need, not what the
# roles install themselves.
BASE_PACKAGES="systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,procps,iproute2,sudo"
RECIPE_HASH="$( { cat "$0"; } | sha256sum | cut -c1-12)"

image_current() {
  local tag="$1"
  [[ "$(docker image inspect -f '{{ index .Config.Labels "org.celeryops.recipe" }}' "$tag" 2>/dev/null)" == "$RECIPE_HASH" ]]
}

build_distro() {
  local name="$1" suite="$2" script="$3" components="$4" flags="$5"
  local tag="${IMAGE_PREFIX}/${name}:latest"
  if image_current "$tag"; then log "image ${tag} is current"; return 0; fi
  # Debian 12's debootstrap has no script for newer Ubuntu suites; the gutsy
  # script handles them (test images only).
  if [[ ! -e "/usr/share/debootstrap/scripts/${suite}" ]]; then
    ln -s "/usr/share/debootstrap/scripts/${script}" "/usr/share/debootstrap/scripts/${suite}"
  fi
  local root; root="$(mktemp -d "${CACHE_DIR}/rootfs-${name}.XXXXXX")"
  log "debootstrap ${suite} for ${tag}"
  # shellcheck disable=SC2086
  if ! debootstrap --variant=minbase --components="${components}" --include="${BASE_PACKAGES}" \
        ${flags} "${suite}" "${root}" >"${root}.log" 2>&1; then
    tail -n 30 "${root}.log" >&2
    rm -rf "${root}"
    die "debootstrap of ${suite} failed (log above)"
  fi
  # A container has no console or udev; keep systemd from waiting on them.
  chroot "${root}" systemctl mask getty.target console-getty.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service \
    systemd-remount-fs.service sys-kernel-config.mount >/dev/null 2>&1 || true
  : >"${root}/etc/machine-id"
  # Package lists ship in the image so hosts install packages without a
  # first long `apt-get update`.
  chroot "${root}" apt-get clean
  tar -C "${root}" -c . | docker import \
    --change 'ENV container=docker' \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change "LABEL org.celeryops.recipe=${RECIPE_HASH}" \
    - "${tag}" >/dev/null
  rm -rf "${root}" "${root}.log"
  log "built ${tag}"
}

build_broker() {
  local tag="${IMAGE_PREFIX}/redis:latest"
  if image_current "$tag"; then log "image ${tag} is current"; return 0; fi
  build_distro debian-12 bookworm bookworm main ""
  log "building ${tag}"
  docker build -q -t "$tag" --label "org.celeryops.recipe=${RECIPE_HASH}" - >/dev/null <<DOCKERFILE
FROM ${IMAGE_PREFIX}/debian-12:latest
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null && apt-get clean
# The broker runs in the foreground without systemd; the test network is private.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
DOCKERFILE
  log "built ${tag}"
}

main() {
  mkdir -p "${CACHE_DIR}"
  local wanted=("$@") pids=() entry name
  ((${#wanted[@]})) || wanted=(debian-12 debian-13 ubuntu-22.04 ubuntu-24.04 redis)
  for entry in "${DISTROS[@]}"; do
    IFS='|' read -r name suite script components flags <<<"$entry"
    [[ " ${wanted[*]} " == *" ${name} "* ]] || continue
    build_distro "$name" "$suite" "$script" "$components" "$flags" &
    pids+=($!)
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  ((rc == 0)) || die "an image build failed"
  if [[ " ${wanted[*]} " == *" redis "* ]]; then build_broker; fi
}
main "$@"
