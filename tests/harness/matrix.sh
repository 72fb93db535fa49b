#!/usr/bin/env bash
# The ansible-core matrix: for every line meta/runtime.yml claims (one
# tests/matrix/requirements-<line>.txt each, kept in step with requires_ansible
# by tests/sanity/test_requires_ansible.py), in that line's own virtualenv, on
# the controller Python its requirements file names (found, or installed where
# the distribution has it, by find_python in common.sh):
#   - ansible-test sanity and units (tests/harness/sanity.sh): every sanity
#     test on the tooling line, compile and import on each Python the line
#     supports; on the other lines the tests whose result depends on
#     ansible-core (import on each Python, validate-modules, ansible-doc ...);
#     the unit tests on the oldest and newest Python 3 of the tooling line and
#     on the line's controller Python on the older lines (what differs between
#     lines is ansible-core, which that covers; the Pythons between get compile
#     and import);
#   - on the newest line other than the tooling one (the Molecule scenarios
#     run that; the older lines get sanity and units only), one converge of
#     the site playbook, from the built collection
#     tarball installed by that line's ansible-galaxy, against a Debian 12 systemd
#     container with a Redis broker, then one real task through the broker.
# Sanity, the unit tests and the converge are three lanes side by side, each
# one line at a time (the converge waits on apt and pip in its containers, the
# tests on the CPU).
#
# Usage: matrix.sh [--sanity | --units-converge] [LINE ...]   (default: both
# parts, every line). The parts may run as two commands, at the same time or
# one after the other: the sanity tests only read the collection and take any
# CPU share (the test run starts them early, at the lowest); the unit tests
# time real processes and the converge boots containers, so they run with a
# full share. The parts share only the lines' virtualenvs, made under a lock.
# Prints one line per check and a closing "matrix: N passed, N failed".
source "$(dirname "$0")/common.sh"
source "${REPO_ROOT}/tests/matrix/lib.sh"

LOG_DIR="${CACHE_DIR}/logs/matrix"
EXTRA_COLLECTIONS="${MATRIX_CACHE}/extra-collections"
# docker run options of a systemd host, read from the one definition the
# Molecule scenarios boot theirs by (molecule/resources/vars/systemd_host.yml).
mapfile -t SYSTEMD_HOST_ARGS < <(python3 - "${REPO_ROOT}/molecule/resources/vars/systemd_host.yml" <<'PY'
import sys
import yaml
with open(sys.argv[1]) as handle:
    host = yaml.safe_load(handle)["celeryops_systemd_host"]
args = ["--cgroupns=%s" % host["cgroupns_mode"]]
args += ["--volume=%s" % volume for volume in host["volumes"]]
args += ["--tmpfs=%s" % path for path in host["tmpfs"]]
args += ["--security-opt=%s" % opt for opt in host["security_opts"]]
args += ["--cap-add=%s" % cap for cap in host["capabilities"]]
print("\n".join(args))
PY
)
SYSTEMD_HOST_COMMAND="$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["celeryops_systemd_host"]["command"])' \
  "${REPO_ROOT}/molecule/resources/vars/systemd_host.yml")"

LINES=()

remove_line_containers() {
  local line="$1"
  docker rm -f "matrix-${line}" "matrix-broker-${line}" >/dev/null 2>&1 || true
  docker network rm "celeryops-matrix-${line}" >/dev/null 2>&1 || true
}

# Ends a process and every process under it, children first.
kill_tree() {
  local child
  for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

# On every exit, interrupted or not: no lane left running, no container left.
cleanup() {
  local line pid
  for pid in $(jobs -p); do kill_tree "$pid"; done
  wait 2>/dev/null || true
  for line in "${LINES[@]}"; do remove_line_containers "$line"; done
}

# The index lists the ansible-core releases that install on the tooling
# virtualenv's Python, the newest of the lines' controller Pythons: no claimed
# line may lack a requirements file, and stale pins are reported.
check_lines() {
  local releases="${MATRIX_CACHE}/ansible-core-releases.txt"
  mkdir -p "$MATRIX_CACHE"
  if ! "${VENV_DIR}/bin/python" -m pip index versions ansible-core >"$releases" 2>/dev/null; then
    log "WARNING: the package index did not list ansible-core; lines checked offline only"
    rm -f "$releases"
  fi
  (
    cd "$REPO_ROOT" || exit 1
    if [[ -f "$releases" ]]; then export CELERYOPS_ANSIBLE_CORE_RELEASES="$releases"; fi
    PYTHONDONTWRITEBYTECODE=1 "${VENV_DIR}/bin/python" -m pytest -p no:cacheprovider -q -rw tests/sanity/test_requires_ansible.py
  )
}

# community.docker (its docker connection plugin) from the `ansible` package of
# the tooling virtualenv. Its requires_ansible (>=2.15) admits every line of
# the matrix and it drives the docker CLI only, so one copy serves all lines;
# installing each line's own `ansible` package (hundreds of MB) would not test
# anything more, and Galaxy cannot be reached.
ensure_docker_collection() {
  local found=("${VENV_DIR}"/lib/python3*/site-packages/ansible_collections/community/docker) src
  src="${found[0]}"
  [[ -d "$src" ]] || die "community.docker is missing from ${VENV_DIR} (tests/requirements.txt: ansible)"
  mkdir -p "${EXTRA_COLLECTIONS}/ansible_collections/community"
  rsync -a --delete "${src}/" "${EXTRA_COLLECTIONS}/ansible_collections/community/docker/"
}

# In a subshell: the environment it sets is that line's only. Run as the
# condition of check's `if`, where errexit is off: every step says `|| exit`.
converge_line() (
  local line="$1" venv ctr="matrix-$1" broker="matrix-broker-$1" net="celeryops-matrix-$1" coll out
  venv="$(line_venv "$line")"
  coll="${MATRIX_CACHE}/collections-${line}"
  export ANSIBLE_COLLECTIONS_PATH="${coll}:${EXTRA_COLLECTIONS}" ANSIBLE_ROLES_PATH=/nonexistent
  export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=false
  export MATRIX_CONTAINER="$ctr" MATRIX_BROKER="$broker" CELERYOPS_CA_BUNDLE
  rm -rf "$coll"
  "${venv}/bin/ansible-galaxy" collection install --force --no-deps -p "$coll" "$TARBALL" || exit 1

  remove_line_containers "$line"
  docker network create "$net" >/dev/null || exit 1
  docker run -d --name "$broker" --network "$net" "${IMAGE_PREFIX}/redis:latest" >/dev/null || exit 1
  ((${#SYSTEMD_HOST_ARGS[@]} > 0)) || die "no systemd host options read from molecule/resources/vars/systemd_host.yml"
  docker run -d --name "$ctr" --hostname "$ctr" --network "$net" "${SYSTEMD_HOST_ARGS[@]}" \
    "${IMAGE_PREFIX}/debian-12:latest" "${SYSTEMD_HOST_COMMAND}" >/dev/null || exit 1
  # The end of boot, before any module runs: systemd-tmpfiles empties /tmp
  # while booting, and with it a module's payload unpacked there.
  # (systemctl answers only once systemd's bus is up: ask again until then.)
  local state="" deadline=$((SECONDS + 180))
  until [[ "$state" == running || "$state" == degraded ]] || ((SECONDS > deadline)); do
    state="$(timeout 60 docker exec "$ctr" systemctl is-system-running --wait 2>&1 || true)"
    [[ "$state" == running || "$state" == degraded ]] || sleep 1
  done
  printf 'systemd in %s: %s\n' "$ctr" "$state"
  [[ "$state" == running || "$state" == degraded ]] || exit 1

  cd "${REPO_ROOT}/tests/matrix" || exit 1
  "${venv}/bin/ansible-playbook" -i inventory.yml converge.yml || exit 1

  # One real task, published through the broker and run by a worker.
  out="$(docker exec "$ctr" sh -c 'cd /srv/testapp/current && set -a && . /etc/testapp/celery.env && set +a \
    && .venv/bin/python -m celery_testapp.probe call add 2 3 --timeout 60')" || exit 1
  printf 'probe: %s\n' "$out"
  python3 -c 'import json, sys; r = json.loads(sys.argv[1].splitlines()[-1]); sys.exit(0 if r["result"] == 5 else 1)' "$out"
)

passed=0 failed=0 failures=()
check() {
  local name="$1"; shift
  local logfile="${LOG_DIR}/${name}.log" start=$SECONDS
  if "$@" >"$logfile" 2>&1; then
    passed=$((passed + 1)); log "${name}: passed in $((SECONDS - start))s"
  else
    failed=$((failed + 1)); failures+=("$name")
    log "${name}: FAILED in $((SECONDS - start))s; last lines of ${logfile}:"
    tail -n 25 "$logfile" >&2
  fi
}

# sanity.sh on every line, one after the other, as the lane named $1 (its
# counts and failures in LOG_DIR): with the arguments $2 on the tooling line,
# $3 on the older lines.
tests_lane() {
  local lane="$1" tooling_args="$2" older_args="$3" line tooling args
  passed=0 failed=0 failures=()
  tooling="$(tooling_line)"
  for line in "${LINES[@]}"; do
    args="$older_args"
    [[ "$line" == "$tooling" ]] && args="$tooling_args"
    # shellcheck disable=SC2086  # the arguments are words
    check "${lane}-${line}" bash "${REPO_ROOT}/tests/harness/sanity.sh" --core "$line" $args
  done
  printf '%s %s\n' "$passed" "$failed" >"${LOG_DIR}/.${lane}-counts"
  printf '%s\n' "${failures[@]}" >"${LOG_DIR}/.${lane}-failures"
}

sanity_lane() { tests_lane sanity --no-units "--no-units --core-dependent"; }
units_lane() { tests_lane units --units-only "--units-only --controller-units"; }

# The tooling line converges in every Molecule scenario: no converge of its
# own. Of the others, the newest converges here; the older ones (2.19, in
# limited security support until May 2027) get sanity and units only: the
# run is bound by its CPU time, and the converges would prove again what the
# newest older line proves, on the same templating engine.
converge_lane() {
  local line tooling converged
  passed=0 failed=0 failures=()
  tooling="$(tooling_line)"
  converged="$(printf '%s\n' "${LINES[@]}" | grep -vxF "$tooling" | sort -V | tail -n 1)"
  for line in "${LINES[@]}"; do
    if [[ "$line" == "$tooling" ]]; then
      log "converge-${line}: not run here, every Molecule scenario converges on ${line}"
      continue
    fi
    if [[ "$line" != "$converged" ]]; then
      log "converge-${line}: not run, ${converged} is the older line that converges"
      continue
    fi
    check "converge-${line}" converge_line "$line"
    remove_line_containers "$line"
  done
  printf '%s %s\n' "$passed" "$failed" >"${LOG_DIR}/.converge-counts"
  printf '%s\n' "${failures[@]}" >"${LOG_DIR}/.converge-failures"
}

# Each line's controller Python, then the lines' virtualenvs side by side, under
# a lock: both parts need them, and one of them makes them.
prepare_lines() {
  local line pids=() p lock
  exec {lock}>"${MATRIX_CACHE}/.lines.lock"
  flock "$lock"
  # One after the other: finding one may install it with apt.
  for line in "${LINES[@]}"; do find_python "$(line_python_version "$line")" >/dev/null; done
  for line in "${LINES[@]}"; do ensure_line_venv "$line" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || die "a line's virtualenv could not be made"; done
  exec {lock}>&-
}

main() {
  local t0=$SECONDS p f lane parts=(sanity units converge)
  case "${1:-}" in
    --sanity) parts=(sanity); shift ;;
    --units-converge) parts=(units converge); shift ;;
  esac
  if (($#)); then LINES=("$@"); else mapfile -t LINES < <(matrix_lines); fi
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$LOG_DIR" "$MATRIX_CACHE"
  for lane in "${parts[@]}"; do rm -f "${LOG_DIR}/.${lane}-counts" "${LOG_DIR}/.${lane}-failures"; done
  bash "${REPO_ROOT}/tests/harness/bootstrap.sh"
  activate_venv
  if [[ " ${parts[*]} " == *" sanity "* ]]; then
    check lines check_lines
  fi
  if [[ " ${parts[*]} " == *" converge "* ]]; then
    bash "${REPO_ROOT}/tests/harness/images.sh" debian-12 redis
    ensure_tarball
    ensure_docker_collection
  fi
  prepare_lines
  log "lines: ${LINES[*]}"

  local pids=()
  for lane in "${parts[@]}"; do "${lane}_lane" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || true; done
  for lane in "${parts[@]}"; do
    read -r p f <"${LOG_DIR}/.${lane}-counts" || { p=0 f=1; failures+=("${lane} lane"); }
    passed=$((passed + p)); failed=$((failed + f))
    while read -r name; do [[ -n "$name" ]] && failures+=("$name"); done <"${LOG_DIR}/.${lane}-failures" || true
  done

  log "the matrix (${parts[*]}) took $((SECONDS - t0))s; logs in ${LOG_DIR}"
  ((failed == 0)) || log "failed: ${failures[*]}"
  echo "matrix: ${passed} passed, ${failed} failed"
  ((failed == 0))
}
main "$@"
