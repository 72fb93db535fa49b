# shellcheck shell=bash
# Shared by tests/harness/sanity.sh, matrix.sh and changelog.sh, after
# common.sh: the ansible-core lines of the matrix, one virtualenv per line, the
# stand-in for ansible-test's pip bootstrap script, the copy of the collection
# ansible-test runs in, and the built tarball. Sourced, never run.

MATRIX_SRC="${REPO_ROOT}/tests/matrix"
MATRIX_CACHE="${CACHE_DIR}/matrix"

# The lines under test: one requirements-<line>.txt per line, each pinning the
# line's newest ansible-core release. tests/sanity/test_requires_ansible.py
# keeps that set equal to the lines meta/runtime.yml claims.
matrix_lines() {
  local f
  for f in "${MATRIX_SRC}"/requirements-*.txt; do
    f="${f##*/requirements-}"
    printf '%s\n' "${f%.txt}"
  done | sort -V
}

# The line of the tooling virtualenv (tests/requirements.txt): the newest one.
tooling_line() {
  sed -n 's/^ansible-core==\([0-9]*\.[0-9]*\)\..*/\1/p' "${REPO_ROOT}/tests/requirements.txt"
}

line_venv() { printf '%s\n' "${MATRIX_CACHE}/venv-$1"; }

# The controller Python version a line runs on, named in its requirements file
# ("# controller-python: X.Y"): each line on a different one, the oldest line
# on the oldest Python the collection supports as a controller.
line_python_version() {
  local req="${MATRIX_SRC}/requirements-$1.txt" version
  version="$(sed -n 's/^# controller-python: *\([0-9]*\.[0-9]*\) *$/\1/p' "$req" 2>/dev/null)"
  [[ -n "$version" ]] || die "${req} names no controller Python (a line '# controller-python: X.Y')"
  printf '%s\n' "$version"
}

# A virtualenv with the line's pinned ansible-core, rebuilt when the pins change.
ensure_line_venv() {
  local line="$1" req="${MATRIX_SRC}/requirements-$1.txt" venv want python
  [[ -f "$req" ]] || die "no ansible-core line ${line}: ${req} is missing (lines: $(matrix_lines | xargs))"
  python="$(find_python "$(line_python_version "$line")")" || exit 1
  venv="$(line_venv "$line")"
  want="$( (cat "$req"; "$python" -VV) | sha256sum | cut -d' ' -f1)"
  if [[ -x "${venv}/bin/ansible-test" && "$(cat "${venv}/.requirements.sha256" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  log "creating the ansible-core ${line} virtualenv in ${venv} ($("$python" -V))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "${venv}/bin/pip" install -q --upgrade pip
  "${venv}/bin/pip" install -q -r "$req"
  printf '%s\n' "$want" >"${venv}/.requirements.sha256"
}

# ansible-test bootstraps pip into every virtualenv it creates with a script
# it downloads from its own CI file host (get-pip-<version>.py), which is not a
# package registry and cannot be reached from this network. It looks in its
# cache (~/.ansible/test/cache/get_pip_<version>.py) first, so put a stand-in
# there, for each pip version the given ansible-test asks for: it installs the
# pip that CPython bundles (ensurepip), then lets that pip install the
# requested version from the configured package index. Written on every run
# (unchanged files are left alone), so a fresh machine needs no manual step.
ensure_get_pip_standins() {
  local venv="$1" cache="${HOME}/.ansible/test/cache" version target tmp versions
  mkdir -p "$cache"
  # get_venv_packages() in ansible-test names the pip version for each Python
  # (a default, and overrides for old Pythons in older lines).
  versions="$(grep -ho "pip=['\"][0-9][0-9.]*['\"]" \
    "${venv}"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py \
    | grep -o '[0-9][0-9.]*' | sort -u)" || die "cannot tell which pip version ansible-test in ${venv} bootstraps"
  for version in ${versions}; do
    target="${cache}/get_pip_${version//./_}.py"
    tmp="$(mktemp "${cache}/.get_pip.XXXXXX")"
    cat >"$tmp" <<'PY'
# Stand-in for ansible-test's get-pip bootstrap script, written by the
# celeryops.celery test harness (tests/matrix/lib.sh): the host the real
# script comes from is unreachable here. Installs the pip bundled with CPython
# (ensurepip), then the requested pip from the configured package index.
# Python 2 compatible: ansible-test runs it with every Python it tests.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + args)
PY
    chmod 0644 "$tmp"
    if cmp -s "$tmp" "$target" && [[ "$(stat -c %a "$target")" == 644 ]]; then
      rm -f "$tmp"
    else
      mv -f "$tmp" "$target"
      log "wrote ${target}"
    fi
  done
}

# A copy of the collection laid out as ansible_collections/celeryops/celery,
# as ansible-test requires, kept between runs with its tests/output (the
# virtualenvs ansible-test delegates to) so a warm run reuses them. The copy
# lies inside this repository's work tree (under .cache, which git ignores),
# where ansible-test would take the outer repository for the collection's and
# find no file: an empty repository of its own makes ansible-test list the
# copy's files, minus what .gitignore excludes, as it does in a clone; its own
# output (virtualenvs included) is excluded there too.
sync_collection_tree() {
  local dest="$1/ansible_collections/celeryops/celery"
  mkdir -p "$dest"
  rsync -a --delete --exclude /.cache --exclude /.git --exclude /tests/output \
    "${REPO_ROOT}/" "${dest}/"
  [[ -d "${dest}/.git" ]] || git -C "$dest" init -q
  grep -qx '/tests/output/' "${dest}/.git/info/exclude" 2>/dev/null || echo '/tests/output/' >>"${dest}/.git/info/exclude"
  printf '%s\n' "$dest"
}

# The collection tarball to test: the one install-collection.sh built
# (run-tests.sh builds it first) while it is newer than every file and folder
# (a folder's time changes when a file in it is added, removed or renamed) that
# goes into it, else one built here the same way into .cache/matrix/dist,
# leaving .cache/collections (which Molecule runs may be using) alone.
TARBALL=""
find_tarball() {
  local dir found
  for dir in "${CACHE_DIR}/dist" "${MATRIX_CACHE}/dist"; do
    found=("${dir}"/celeryops-celery-*.tar.gz)
    [[ -f "${found[0]}" ]] || continue
    if [[ -z "$(cd "$REPO_ROOT" && find galaxy.yml meta plugins roles playbooks docs changelogs README.md \
          -newer "${found[0]}" 2>/dev/null | head -n1)" ]]; then
      printf '%s\n' "${found[0]}"
      return 0
    fi
  done
  return 1
}

ensure_tarball() {
  if ! TARBALL="$(find_tarball)"; then
    rm -rf "${MATRIX_CACHE}/dist"
    mkdir -p "${MATRIX_CACHE}/dist"
    ansible-galaxy collection build --force --output-path "${MATRIX_CACHE}/dist" "${REPO_ROOT}" >/dev/null
    TARBALL="$(find_tarball)" || die "the collection build made no tarball"
  fi
  log "collection: ${TARBALL}"
}
