#!/usr/bin/env bash
# Runs every test of the collection on a fresh machine: installs what it needs,
# builds the base images, builds and installs the collection tarball, then
# lints, runs the unit, spec, docs and changelog checks, ansible-test sanity and
# units with a converge on every ansible-core line, and every Molecule scenario.
#
# Usage: run-tests.sh [SCENARIO ...]   (default: every scenario)
# Prints one line per stage and a closing "stages: N passed, N failed".
source "$(dirname "$0")/common.sh"

SCENARIOS=(preflight default supervisor beat faults pools release)
((${#@})) && SCENARIOS=("$@")

# The scenarios run in lanes beside the static checks and the ansible-core
# matrix (CPU-bound while the scenarios mostly wait on their containers); each
# lane runs its scenarios one after another. No check sizes itself to the
# machine's speed (they wait for the state they need and measure bounds
# against baselines taken in the same run), so they may share the machine. A
# third lane made every lane slower and the whole run no shorter. `release`
# runs last and alone:
# its pause bound compares a switch with the same stream a moment before, which
# a neighbour whose load changes in between would blur.
LANES=("preflight default faults" "supervisor beat pools")
LAST=(release)

passed=0 failed=0 failures=()
LOG_DIR="${CACHE_DIR}/logs"
RESULTS_DIR="${LOG_DIR}/.stages"
stage() {
  local name="$1"; shift
  local logfile="${LOG_DIR}/${name//[^A-Za-z0-9_.-]/_}.log" start=$SECONDS
  log "stage ${name} ..."
  if "$@" >"${logfile}" 2>&1; then
    log "stage ${name}: passed in $((SECONDS - start))s"
    echo "passed ${name}" >>"${RESULTS_DIR}/results"
  else
    log "stage ${name}: FAILED in $((SECONDS - start))s; last lines of ${logfile}:"
    tail -n 60 "${logfile}" >&2
    echo "failed ${name}" >>"${RESULTS_DIR}/results"
  fi
}

wanted() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }

# One lane: its scenarios (those asked for) one after another.
lane() {
  local scenario
  for scenario in "$@"; do
    wanted "$scenario" && stage "molecule-${scenario}" molecule test --scenario-name "${scenario}"
  done
  return 0
}

# The matrix's stage: its exit status, and its log as the stage's output.
matrix_stage() {
  local status=0 start=$SECONDS
  bash "${REPO_ROOT}/tests/harness/matrix.sh" || status=$?
  echo "matrix ran $((SECONDS - start))s (beside the scenario lanes)"
  return "${status}"
}

# The CPU-bound stages, one after another, beside the scenario lanes: the
# static checks (seconds to a minute each), then the matrix.
static_checks_and_matrix() {
  stage yamllint yamllint --strict .
  stage ansible-lint env ANSIBLE_HOME="${CACHE_DIR}/ansible-lint-home" ansible-lint
  stage unit-and-spec-tests bash "${REPO_ROOT}/tests/harness/units.sh"
  stage docs bash "${REPO_ROOT}/tests/harness/docs.sh"
  stage changelog-and-galaxy-import bash "${REPO_ROOT}/tests/harness/changelog.sh"
  stage ansible-core-matrix matrix_stage
}

main() {
  local t0=$SECONDS pids=() pid entry scenario
  mkdir -p "${LOG_DIR}"
  rm -rf "${RESULTS_DIR}"; mkdir -p "${RESULTS_DIR}"
  ready_machine
  export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

  # Every scenario asked for belongs to a lane or to the last ones.
  for scenario in "${SCENARIOS[@]}"; do
    [[ " ${LANES[*]} ${LAST[*]} " == *" ${scenario} "* ]] || die "unknown scenario ${scenario}"
  done
  log "stages of the static checks and the ansible-core matrix started, beside the lanes: $(printf '[%s] ' "${LANES[@]}")"
  static_checks_and_matrix &
  pids+=($!)
  for entry in "${LANES[@]}"; do
    # shellcheck disable=SC2086
    lane ${entry} &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  lane "${LAST[@]}"

  while read -r status name; do
    if [[ "$status" == passed ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
  done <"${RESULTS_DIR}/results"
  log "all stages took $((SECONDS - t0))s; logs in ${LOG_DIR}"
  ((failed == 0)) || log "failed stages: ${failures[*]}"
  echo "stages: ${passed} passed, ${failed} failed"
  ((failed == 0))
}
main
