#!/usr/bin/env bash
# Runs the release-switch benchmark (benchmarks/test_release_switch.py) on the
# `release` scenario's fleet and prints its tables:  make bench
source "$(dirname "$0")/../tests/harness/common.sh"

ready_machine debian-12 debian-13 ubuntu-24.04 redis rabbitmq
export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
export CELERYOPS_RELEASE_CHECKS=../../benchmarks
export CELERYOPS_BENCH_OUT="${CACHE_DIR}/benchmarks/release_switch.md"
rm -f "${CELERYOPS_BENCH_OUT}"
molecule test --scenario-name release
status=$?
echo
cat "${CELERYOPS_BENCH_OUT}" 2>/dev/null || log "no results written"
exit "${status}"
