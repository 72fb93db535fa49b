# shellcheck shell=bash
# Shared settings for the test harness. Sourced, never run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="${CELERYOPS_CACHE_DIR:-${REPO_ROOT}/.cache}"
VENV_DIR="${CACHE_DIR}/venv"
COLLECTIONS_DIR="${CACHE_DIR}/collections"
export IMAGE_PREFIX="${CELERYOPS_IMAGE_PREFIX:-celeryops-test}"

log() { printf '\033[1m[harness %(%H:%M:%S)T]\033[0m %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The host's CA bundle: containers need it for HTTPS to the package index when
# a TLS-intercepting proxy sits in the way (the same need corporate users have).
host_ca_bundle() {
  local f
  for f in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [[ -n "$f" && -f "$f" ]]; then printf '%s\n' "$f"; return 0; fi
  done
  return 1
}

# An interpreter of Python X.Y (the ansible-core lines need their own: 2.20
# and later run only on a controller Python of 3.12 or newer). Looks at
# CELERYOPS_PYTHON_<X>_<Y> (a path), pythonX.Y on PATH (a pyenv shim answers
# only when that version is active, so each candidate must run), pyenv's
# installed versions (newest patch release first) and the system's; then, on
# Debian and Ubuntu, installs the distribution's pythonX.Y and pythonX.Y-venv
# when its archive has them. Fails with what to do otherwise.
find_python() {
  local want="$1" var candidates=() c root
  var="CELERYOPS_PYTHON_${want//./_}"
  [[ -n "${!var:-}" ]] && candidates+=("${!var}")
  candidates+=("$(command -v "python${want}" || true)")
  if root="$(pyenv root 2>/dev/null)" || root="${PYENV_ROOT:-${HOME}/.pyenv}"; then
    while read -r c; do candidates+=("$c"); done < <(
      printf '%s\n' "${root}/versions/${want}".*/bin/"python${want}" | sort -rV)
  fi
  candidates+=("/usr/local/bin/python${want}" "/usr/bin/python${want}")
  for c in "${candidates[@]}"; do
    [[ -n "$c" && -x "$c" ]] || continue
    if "$c" -c "import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != tuple(map(int, '${want}'.split('.'))))" \
        >/dev/null 2>&1; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  if [[ -z "${!var:-}" ]] && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] \
      && apt-get update -qq >/dev/null 2>&1 \
      && apt-cache show "python${want}" "python${want}-venv" >/dev/null 2>&1; then
    log "apt-get install python${want} python${want}-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "python${want}" "python${want}-venv" >/dev/null 2>&1 || true
    if /usr/bin/python"${want}" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      printf '%s\n' "/usr/bin/python${want}"
      return 0
    fi
  fi
  die "no Python ${want} with the venv module found (looked at \$${var}, python${want} on PATH, pyenv's versions, /usr/bin, /usr/local/bin; this distribution's archive has no python${want}). Install it, e.g. \`pyenv install ${want}\` (pyenv builds it from source), or point ${var} at its interpreter, then run again."
}

# The Python of the tooling virtualenv: the one the tooling line of
# tests/requirements.txt runs on, named in its tests/matrix/requirements-<line>.txt.
tooling_python_version() {
  local line
  line="$(sed -n 's/^ansible-core==\([0-9]*\.[0-9]*\)\..*/\1/p' "${REPO_ROOT}/tests/requirements.txt")"
  sed -n 's/^# controller-python: *\([0-9]*\.[0-9]*\) *$/\1/p' "${REPO_ROOT}/tests/matrix/requirements-${line}.txt"
}

activate_venv() {
  # shellcheck disable=SC1091
  source "${VENV_DIR}/bin/activate"
  export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS_DIR}"
  export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-1}"
  export PY_COLORS="${PY_COLORS:-1}"
  CELERYOPS_CA_BUNDLE="$(host_ca_bundle || true)"
  export CELERYOPS_CA_BUNDLE
}

# What every entry point (test run, demo, benchmark, mutants) needs first: the
# Docker engine, the base images (all, or those named), the collection built
# and installed from its tarball, the tooling virtualenv active, and the
# repository as the working directory.
ready_machine() {
  local venv_pid venv_status=0
  bash "${REPO_ROOT}/tests/harness/bootstrap.sh" --system
  # The tooling virtualenv (pip) while the images build (debootstrap): on a
  # fresh machine each takes minutes, and neither needs the other.
  bash "${REPO_ROOT}/tests/harness/bootstrap.sh" --venv &
  venv_pid=$!
  bash "${REPO_ROOT}/tests/harness/images.sh" "$@"
  wait "$venv_pid" || venv_status=$?
  ((venv_status == 0)) || die "the tooling virtualenv could not be made (bootstrap.sh --venv: exit ${venv_status})"
  bash "${REPO_ROOT}/tests/harness/install-collection.sh"
  activate_venv
  cd "${REPO_ROOT}" || exit 1
}
