#!/usr/bin/env bash
# Runs every test of the collection on a fresh machine: installs what it needs,
# builds the base images, builds and installs the collection tarball, then
# lints, runs the spec, docs and changelog checks, ansible-test sanity and
# units with a converge on every ansible-core line, and every Molecule scenario.
#
# Usage: run-tests.sh [SCENARIO ...]   (default: every scenario)
# Prints one line per stage and a closing "stages: N passed, N failed".
source "$(dirname "$0")/common.sh"

SCENARIOS=(preflight default supervisor beat rabbitmq tls faults pools release)
((${#@})) && SCENARIOS=("$@")

# The run, in three steps:
# 1. The release scenario's fleet converges.
# 2. Its switches (the overlap release and the rollback) run alone: their
#    pause bound compares a switch with the same stream a moment before,
#    which a neighbour whose load changes in between would blur.
# 3. Three lanes side by side, each running its stages one after another. No
#    check sizes itself to the machine's speed (they wait for the state they
#    need and measure bounds against baselines taken in the same run), so they
#    may share the machine. LANES below deals the stages by hand, longest
#    first to the lane free soonest (by their times on a 2-CPU machine), so
#    that the lanes end together: a lane left alone at the end leaves CPUs idle. The
#    `pools` scenario mostly waits (its workers hold ten-minute tasks), so it
#    runs in the middle of the run, where the other lanes use the CPUs it
#    leaves, not at its end.
# Step 2 leaves a third of the CPUs idle on a 2-CPU machine, and the run is
# bound by its CPU time: the ansible-core sanity tests and the static checks
# (lint, spec, docs, changelog: CPU only, on the controller, and nothing in
# them is timed) run from the start at the lowest CPU share, where they take
# only what is idle and yield to everything else, a switch included; they get
# a full share when the lanes begin.
# Besides the scenarios, a lane may hold `release-checks` (the release
# scenario's other checks, then the removal of its fleet) and
# `ansible-core-units-converge` (the unit tests, which time real processes,
# and a converge on every ansible-core line).
LANES=(
  "release-checks rabbitmq preflight ansible-core-units-converge"
  "beat supervisor tls"
  "faults pools default"
)
passed=0 failed=0 failures=()
LOG_DIR="${CACHE_DIR}/logs"
RESULTS_DIR="${LOG_DIR}/.stages"
# A stage's log file, named after the stage.
stage_log() { echo "${LOG_DIR}/${1//[^A-Za-z0-9_.-]/_}.log"; }
stage() {
  local name="$1"; shift
  local logfile start=$SECONDS
  logfile="$(stage_log "${name}")"
  log "stage ${name} ..."
  if "$@" >"${logfile}" 2>&1; then
    log "stage ${name}: passed in $((SECONDS - start))s"
    echo "passed ${name}" >>"${RESULTS_DIR}/results"
  else
    log "stage ${name}: FAILED in $((SECONDS - start))s; last lines of ${logfile}:"
    tail -n 60 "${logfile}" >&2
    echo "failed ${name}" >>"${RESULTS_DIR}/results"
    return 1
  fi
}

wanted() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }

# One lane: its stages (the scenarios asked for) one after another.
lane() {
  local entry
  for entry in "$@"; do
    case "${entry}" in
      ansible-core-units-converge) stage ansible-core-units-converge matrix_stage --units-converge || true ;;
      release-checks)
        wanted release || continue
        release_part checks release_checks rest
        molecule destroy --scenario-name release >>"$(stage_log molecule-release-fleet)" 2>&1 || true
        ;;
      *) wanted "${entry}" && { stage "molecule-${entry}" molecule test --scenario-name "${entry}" || true; } ;;
    esac
  done
  return 0
}

# A part of the matrix as a stage (--sanity or --units-converge): its exit
# status, and its log as the stage's output.
matrix_stage() {
  local status=0 start=$SECONDS
  bash "${REPO_ROOT}/tests/harness/matrix.sh" "$1" || status=$?
  echo "matrix ${1#--} ran $((SECONDS - start))s"
  return "${status}"
}

# The lowest CPU share, for work that may wait (cgroup v1's cpu controller:
# a cpu cgroup of its own with cpu.shares 2, which also yields to the
# containers' cgroups; elsewhere nice 19, which yields within the run alone).
BACKGROUND_CGROUP=/sys/fs/cgroup/cpu/celeryops-background
# Puts the calling (sub)shell, and so everything it starts, at the lowest share.
lowest_cpu_share() {
  if mkdir -p "${BACKGROUND_CGROUP}" 2>/dev/null && echo 2 >"${BACKGROUND_CGROUP}/cpu.shares" 2>/dev/null \
      && echo "${BASHPID}" >"${BACKGROUND_CGROUP}/cgroup.procs" 2>/dev/null; then
    log "$1: at the lowest CPU share (${BACKGROUND_CGROUP}, cpu.shares 2)"
  else
    renice -n 19 -p "${BASHPID}" >/dev/null
    log "$1: at the lowest CPU share (nice 19)"
  fi
}
# Renices a process and every process under it.
renice_tree() {
  local child
  renice -n "$2" -p "$1" >/dev/null 2>&1 || return 1
  for child in $(pgrep -P "$1" || true); do renice_tree "${child}" "$2" || true; done
}
# Gives the work that lowest_cpu_share put at the lowest share (in the
# subshells whose PIDs are given) a full share.
full_cpu_share() {
  local pid
  if [[ -f "${BACKGROUND_CGROUP}/cpu.shares" ]]; then
    echo 1024 >"${BACKGROUND_CGROUP}/cpu.shares" && return 0
  fi
  for pid in "$@"; do
    kill -0 "${pid}" 2>/dev/null || continue
    # Twice: a process started while the tree was walked keeps its parent's nice.
    renice_tree "${pid}" 0 && renice_tree "${pid}" 0 && continue
    log "WARNING: could not raise the CPU share of process ${pid} and its children (renice needs root)"
  done
}

# The release scenario in its parts (see molecule/release/tests/conftest.py):
# the fleet, the switches, the other checks; each part runs only if the one
# before passed, and is counted as failed otherwise.
release_fleet() {
  molecule destroy --scenario-name release && molecule syntax --scenario-name release \
    && molecule converge --scenario-name release
}
release_checks() {
  CELERYOPS_RELEASE_CHECKS_PART="$1" molecule verify --scenario-name release
}
release_not_run() {
  echo "not run: $1" >&2
  return 1
}
release_status=0
release_part() {
  local name="$1"; shift
  if ((release_status == 0)); then
    stage "molecule-release-${name}" "$@" || release_status=1
  else
    stage "molecule-release-${name}" release_not_run "an earlier part of the release scenario failed" || true
  fi
}

# The static checks, seconds to a minute each, one after another.
static_checks() {
  stage yamllint yamllint --strict . || true
  stage ansible-lint env ANSIBLE_HOME="${CACHE_DIR}/ansible-lint-home" ansible-lint || true
  # The unit tests (tests/unit) run in the matrix, by ansible-test on every
  # line; here only the checks that keep defaults, specs and docs in step.
  stage spec-tests bash "${REPO_ROOT}/tests/harness/units.sh" tests/sanity || true
  stage docs bash "${REPO_ROOT}/tests/harness/docs.sh" || true
  stage changelog-and-galaxy-import bash "${REPO_ROOT}/tests/harness/changelog.sh" || true
}

# What a failed stage's log says, in short, at the end of the run: the failed
# checks and tasks, and the assertions' first lines.
failure_summary() {
  local name="$1" logfile
  logfile="$(stage_log "${name}")"
  log "${name} failed; from ${logfile}:"
  sed 's/\x1b\[[0-9;]*m//g; s/^ *│ \?//' "${logfile}" \
    | grep -E '^(FAILED|ERROR) |^E +[^ ]|fatal: \[|Executed: Failed|^not run: ' \
    | cut -c1-400 | head -n 40 >&2 || true
}

# The machine's CPU time so far, in clock ticks: "busy idle" (idle counts
# iowait). The run is CPU-bound on a small machine; the report says how much.
cpu_ticks() {
  awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat
}
# Logs how busy the CPUs were since an earlier cpu_ticks, as a share of the time.
cpu_report() {
  local phase="$1" before="$2" share
  share="$(printf '%s %s\n' "${before}" "$(cpu_ticks)" \
    | awk '{b = $3 - $1; i = $4 - $2; printf "%d%%", (b + i) ? 100 * b / (b + i) : 0}')"
  log "${phase}: the CPUs were busy ${share} of the time ($(nproc) CPUs)"
}

main() {
  local t0=$SECONDS pids=() background=() pid entry scenario ticks0 ticks
  mkdir -p "${LOG_DIR}"
  rm -rf "${RESULTS_DIR}"; mkdir -p "${RESULTS_DIR}"
  ready_machine
  export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

  # Every scenario asked for belongs to a lane, or is the release; the
  # lanes' other stages are not scenarios.
  for scenario in "${SCENARIOS[@]}"; do
    [[ " ${LANES[*]} release " == *" ${scenario} "* && "${scenario}" != release-checks \
      && "${scenario}" != ansible-core-units-converge ]] || die "unknown scenario ${scenario}"
  done
  ticks0="$(cpu_ticks)" ticks="${ticks0}"
  log "the ansible-core sanity tests and the static checks, at the lowest CPU share until the lanes begin"
  (lowest_cpu_share ansible-core-sanity; stage ansible-core-sanity matrix_stage --sanity || true) &
  background+=($!)
  (lowest_cpu_share static-checks; static_checks) &
  background+=($!)
  wanted release && release_part fleet release_fleet
  cpu_report "fleet" "${ticks}"
  if wanted release; then
    ticks="$(cpu_ticks)"
    log "the release scenario's switches, alone"
    release_part switches release_checks switches
    cpu_report "switches" "${ticks}"
  fi
  ticks="$(cpu_ticks)"
  full_cpu_share "${background[@]}"
  log "three lanes side by side: $(printf '[%s] ' "${LANES[@]}")"
  for entry in "${LANES[@]}"; do
    # shellcheck disable=SC2086
    lane ${entry} &
    pids+=($!)
  done
  for pid in "${pids[@]}" "${background[@]}"; do wait "$pid" || true; done
  rmdir "${BACKGROUND_CGROUP}" 2>/dev/null || true
  cpu_report "lanes" "${ticks}"
  cpu_report "whole run" "${ticks0}"

  while read -r status name; do
    if [[ "$status" == passed ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
  done <"${RESULTS_DIR}/results"
  log "all stages took $((SECONDS - t0))s; logs in ${LOG_DIR}"
  for name in "${failures[@]}"; do failure_summary "$name"; done
  ((failed == 0)) || log "failed stages: ${failures[*]}"
  echo "stages: ${passed} passed, ${failed} failed"
  ((failed == 0))
}
main
