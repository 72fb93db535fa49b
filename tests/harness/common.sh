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

activate_venv() {
  # shellcheck disable=SC1091
  source "${VENV_DIR}/bin/activate"
  export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS_DIR}"
  export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-1}"
  export PY_COLORS="${PY_COLORS:-1}"
  CELERYOPS_CA_BUNDLE="$(host_ca_bundle || true)"
  export CELERYOPS_CA_BUNDLE
}
