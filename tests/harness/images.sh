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

# The hash of a recipe: the text that makes an image.
recipe_hash() { sha256sum | cut -c1-12; }

image_current() {
  local tag="$1" hash="$2"
  [[ "$(docker image inspect -f '{{ index .Config.Labels "org.celeryops.recipe" }}' "$tag" 2>/dev/null)" == "$hash" ]]
}

# A distribution's recipe: its row, the packages and the build itself.
distro_hash() {
  { echo "$*" "${BASE_PACKAGES}"; declare -f build_distro; } | recipe_hash
}

build_distro() {
  local name="$1" suite="$2" script="$3" components="$4" flags="$5"
  local tag="${IMAGE_PREFIX}/${name}:latest" hash
  hash="$(distro_hash "$@")"
  if image_current "$tag" "$hash"; then log "image ${tag} is current"; return 0; fi
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
    --change "LABEL org.celeryops.recipe=${hash}" \
    - "${tag}" >/dev/null
  rm -rf "${root}" "${root}.log"
  log "built ${tag}"
}

# The brokers: the distribution's package, its service in the foreground as
# the container's command (no systemd); the test network is private.
BROKERS=(redis rabbitmq)
broker_recipe() {
  case "$1" in
    redis) echo 'redis-server|["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]' ;;
    # With its Erlang, as a user's host has it; the node runs as the
    # rabbitmq user (the package's wrapper drops root).
    rabbitmq) echo 'rabbitmq-server|["rabbitmq-server"]' ;;
  esac
}
broker_dockerfile() {
  local packages command
  IFS='|' read -r packages command <<<"$(broker_recipe "$1")"
  cat <<DOCKERFILE
FROM ${IMAGE_PREFIX}/debian-12:latest
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages} >/dev/null && apt-get clean
CMD ${command}
DOCKERFILE
}

build_broker() {
  local name="$1" tag="${IMAGE_PREFIX}/$1:latest" hash
  build_distro debian-12 bookworm bookworm main ""
  hash="$( { broker_dockerfile "$name"; docker image inspect -f '{{ index .Config.Labels "org.celeryops.recipe" }}' \
    "${IMAGE_PREFIX}/debian-12:latest"; } | recipe_hash)"
  if image_current "$tag" "$hash"; then log "image ${tag} is current"; return 0; fi
  log "building ${tag}"
  broker_dockerfile "$name" | docker build -q -t "$tag" --label "org.celeryops.recipe=${hash}" - >/dev/null
  log "built ${tag}"
}

main() {
  mkdir -p "${CACHE_DIR}"
  local wanted=("$@") pids=() entry name
  ((${#wanted[@]})) || wanted=(debian-12 debian-13 ubuntu-22.04 ubuntu-24.04 "${BROKERS[@]}")
  for entry in "${DISTROS[@]}"; do
    IFS='|' read -r name suite script components flags <<<"$entry"
    [[ " ${wanted[*]} " == *" ${name} "* ]] || continue
    build_distro "$name" "$suite" "$script" "$components" "$flags" &
    pids+=($!)
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  ((rc == 0)) || die "an image build failed"
  for name in "${BROKERS[@]}"; do
    [[ " ${wanted[*]} " == *" ${name} "* ]] && build_broker "$name"
  done
  return 0
}
main "$@"
