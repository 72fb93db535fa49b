#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian machine:
# the Docker engine (started if none answers), debootstrap, Chromium, and
# pinned Python tooling in a private virtualenv. Safe to run again: each step
# is skipped when already done.
source "$(dirname "$0")/common.sh"

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  apt_install docker.io containerd runc iptables ca-certificates
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/celeryops-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 1
    done
  fi
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer; see /var/log/celeryops-dockerd.log"
  log "Docker engine $(docker version -f '{{.Server.Version}}') answers"
}

# On the Python its ansible-core line runs on (3.12 or newer for 2.20 and
# later; see find_python in common.sh), rebuilt when the pins or it change.
ensure_venv() {
  local req="${REPO_ROOT}/tests/requirements.txt" stamp="${VENV_DIR}/.requirements.sha256" python want version
  version="$(tooling_python_version)"
  [[ -n "$version" ]] || die "the tooling line's tests/matrix/requirements-<line>.txt names no controller Python"
  python="$(find_python "$version")" || exit 1
  want="$( (cat "$req"; "$python" -VV) | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "creating the tooling virtualenv in ${VENV_DIR} ($("$python" -V))"
  rm -rf "${VENV_DIR}"
  "$python" -m venv "${VENV_DIR}"
  "${VENV_DIR}/bin/pip" install -q --upgrade pip
  "${VENV_DIR}/bin/pip" install -q -r "$req"
  printf '%s\n' "$want" >"$stamp"
}

# Usage: bootstrap.sh [--system | --venv]: the packages and the Docker engine,
# the virtualenv, or (by default) both.
main() {
  [[ $(id -u) -eq 0 ]] || die "the harness manages the Docker engine and needs root"
  local part="${1:-all}"
  if [[ "$part" == all || "$part" == --system ]]; then
    # Chromium: the headless browser of the Flower dashboard's check (driven by
    # Playwright from the tooling virtualenv; Playwright's own browser
    # download is not used).
    apt_install debootstrap python3-venv rsync shellcheck chromium fonts-dejavu-core
    ensure_docker
  fi
  if [[ "$part" == all || "$part" == --venv ]]; then
    ensure_venv
  fi
}
main "$@"
