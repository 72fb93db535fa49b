#!/usr/bin/env bash
# Runs every test of the collection on a fresh machine: installs what it needs,
# builds the base images, builds and installs the collection tarball, then
# lints, runs the unit, spec, docs and changelog checks, ansible-test sanity and
# units with a converge on every ansible-core line, and every Molecule scenario.
#
# Usage: run-tests.sh [SCENARIO ...]   (default: every scenario)
# Prints one line per stage and a closing "stages: N passed, N failed".
source "$(dirname "$0")/common.sh"

SCENARIOS=(preflight default supervisor beat)
((${#@})) && SCENARIOS=("$@")

passed=0 failed=0 failures=()
LOG_DIR="${CACHE_DIR}/logs"
stage() {
  local name="$1"; shift
  local logfile="${LOG_DIR}/${name//[^A-Za-z0-9_.-]/_}.log" start=$SECONDS
  log "stage ${name} ..."
  if "$@" >"${logfile}" 2>&1; then
    passed=$((passed + 1))
    log "stage ${name}: passed in $((SECONDS - start))s"
  else
    failed=$((failed + 1)); failures+=("${name}")
    log "stage ${name}: FAILED in $((SECONDS - start))s; last lines of ${logfile}:"
    tail -n 60 "${logfile}" >&2
  fi
}

main() {
  local t0=$SECONDS
  mkdir -p "${LOG_DIR}"
  bash "${REPO_ROOT}/tests/harness/bootstrap.sh"
  bash "${REPO_ROOT}/tests/harness/images.sh"
  bash "${REPO_ROOT}/tests/harness/install-collection.sh"
  activate_venv
  export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
  cd "${REPO_ROOT}" || exit 1

  stage yamllint yamllint --strict .
  stage ansible-lint env ANSIBLE_HOME="${CACHE_DIR}/ansible-lint-home" ansible-lint
  stage unit-and-spec-tests bash "${REPO_ROOT}/tests/harness/units.sh"
  stage docs bash "${REPO_ROOT}/tests/harness/docs.sh"
  stage changelog-and-galaxy-import bash "${REPO_ROOT}/tests/harness/changelog.sh"
  # ansible-test sanity and units on every ansible-core line, plus a converge each.
  stage ansible-core-matrix bash "${REPO_ROOT}/tests/harness/matrix.sh"
  for scenario in "${SCENARIOS[@]}"; do
    stage "molecule-${scenario}" molecule test --scenario-name "${scenario}"
  done

  log "all stages took $((SECONDS - t0))s; logs in ${LOG_DIR}"
  ((failed == 0)) || log "failed stages: ${failures[*]}"
  echo "stages: ${passed} passed, ${failed} failed"
  ((failed == 0))
}
main
