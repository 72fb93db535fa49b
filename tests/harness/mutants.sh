#!/usr/bin/env bash
# Sees a scenario's checks fail against a deliberately broken collection: the
# mutants listed in tests/mutants/<scenario>.yml, one round each.
#
# Usage: mutants.sh SCENARIO [TEXT]   (TEXT: only the rounds whose name holds it;
# not part of `make test`: a contributor's check
# that a new test can fail; see README "Keeping a claim and its test together")
source "$(dirname "$0")/common.sh"
if [[ ! -f "${REPO_ROOT}/tests/mutants/${1:-}.yml" ]]; then
  scenarios=("${REPO_ROOT}"/tests/mutants/*.yml)
  scenarios=("${scenarios[@]##*/}")
  die "usage: mutants.sh SCENARIO (one of: ${scenarios[*]%.yml})"
fi
ready_machine
export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
exec python "${REPO_ROOT}/tests/harness/mutants.py" "$@"
