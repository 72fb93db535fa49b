#!/usr/bin/env bash
# Runs every test of the collection on a fresh machine: installs what it needs,
# builds the base images, builds and installs the collection tarball, then
# lints, runs the unit, spec, docs and changelog checks, ansible-test sanity and
# units with a converge on every ansible-core line, and every Molecule scenario.
#
# Usage: run-tests.sh [SCENARIO ...]   (default: every scenario)
# Prints one line per stage and a closing "stages: N passed, N failed".
source "$(dirname "$0")/common.sh"

SCENARIOS=(preflight default supervisor beat faults release)
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

# Scenarios that may run beside the ansible-core matrix: none of them asserts
# an upper bound on a duration.
BESIDE_MATRIX=(preflight default supervisor)

# The matrix's stage: its exit status, and its log as the stage's output.
wait_for_matrix() {
  local status=0
  wait "$1" || status=$?
  cat "${LOG_DIR}/ansible-core-matrix.run.log"
  echo "matrix ran $((SECONDS - $2))s (beside the first scenarios)"
  return "${status}"
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
  # ansible-test sanity and units on every ansible-core line, plus a converge
  # each. It is CPU-bound; the first scenarios mostly wait on their containers,
  # so they run beside it. The scenarios that measure timings run after it.
  local matrix_log="${LOG_DIR}/ansible-core-matrix.run.log" matrix_start=$SECONDS matrix_pid
  log "stage ansible-core-matrix started, beside the scenarios ${BESIDE_MATRIX[*]}"
  bash "${REPO_ROOT}/tests/harness/matrix.sh" >"${matrix_log}" 2>&1 &
  matrix_pid=$!
  local scenario matrix_waited=0
  for scenario in "${SCENARIOS[@]}"; do
    if ((!matrix_waited)) && [[ " ${BESIDE_MATRIX[*]} " != *" ${scenario} "* ]]; then
      stage ansible-core-matrix wait_for_matrix "${matrix_pid}" "${matrix_start}"
      matrix_waited=1
    fi
    stage "molecule-${scenario}" molecule test --scenario-name "${scenario}"
  done
  ((matrix_waited)) || stage ansible-core-matrix wait_for_matrix "${matrix_pid}" "${matrix_start}"

  log "all stages took $((SECONDS - t0))s; logs in ${LOG_DIR}"
  ((failed == 0)) || log "failed stages: ${failures[*]}"
  echo "stages: ${passed} passed, ${failed} failed"
  ((failed == 0))
}
main
