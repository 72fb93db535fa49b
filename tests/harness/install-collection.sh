#!/usr/bin/env bash
# Builds the collection tarball exactly as it would be published and installs
# it into a private collections path: scenarios and the demo run against that
# install, so a file missing from the build or a wrong FQCN fails the tests.
source "$(dirname "$0")/common.sh"
activate_venv
out="${CACHE_DIR}/dist"
rm -rf "${out}" "${COLLECTIONS_DIR}"
mkdir -p "${out}" "${COLLECTIONS_DIR}"
ansible-galaxy collection build --force --output-path "${out}" "${REPO_ROOT}" >/dev/null
tarball="$(ls "${out}"/celeryops-celery-*.tar.gz)"
ansible-galaxy collection install --force --no-deps -p "${COLLECTIONS_DIR}" "${tarball}" >/dev/null
log "installed $(basename "${tarball}") ($(du -h "${tarball}" | cut -f1)) into ${COLLECTIONS_DIR}"
