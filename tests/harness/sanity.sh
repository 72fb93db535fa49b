#!/usr/bin/env bash
# ansible-test sanity and units for one ansible-core line, in that line's own
# virtualenv (tests/matrix/requirements-<line>.txt), from a copy of the
# collection laid out as ansible_collections/celeryops/celery, as ansible-test
# requires, with --venv: ansible-test makes (and keeps, under
# ~/.ansible/test/venv) its own virtualenvs, so no container image is needed.
#
# Every sanity test runs (but those of LINE_INDEPENDENT with --core-dependent),
# its compile and import tests on each Python the line supports that this
# machine has; the unit tests on the oldest and the newest of them.
#
# Usage: sanity.sh [--core LINE] [--controller-units] [--core-dependent] [--no-units | --units-only]
#   --core LINE         ansible-core line, e.g. 2.20 (default: the tooling line
#                       of tests/requirements.txt)
#   --controller-units  unit tests on the line's controller Python only (what
#                       matrix.sh does on all lines but the tooling line)
#   --core-dependent    only the sanity tests whose result depends on the
#                       ansible-core line (what matrix.sh does on all lines but
#                       the tooling line); see LINE_INDEPENDENT
#   --no-units          sanity only
#   --units-only        unit tests only (in a copy of the collection of their
#                       own, so that a sanity run of the same line may run
#                       beside them)
source "$(dirname "$0")/common.sh"
source "${REPO_ROOT}/tests/matrix/lib.sh"

# The sanity tests that check the collection's own text with tools that do
# not come from ansible-core (pycodestyle, pylint's general checks, the
# compiler, shellcheck, yamllint) or that read nothing but the files: the
# same result on every line, so the tooling line runs them for all. pylint is
# among them: its ansible-core plugins check deprecations, which matter on
# the newest line, the tooling one.
LINE_INDEPENDENT=(compile pep8 pylint shellcheck yamllint line-endings no-smart-quotes
  no-illegal-filenames symlinks shebang empty-init)
line="$(tooling_line)" controller_units=0 units=1 sanity=1 core_dependent=0
while (($#)); do
  case "$1" in
    --core) line="$2"; shift 2 ;;
    --controller-units) controller_units=1; shift ;;
    --core-dependent) core_dependent=1; shift ;;
    --no-units) units=0; shift ;;
    --units-only) sanity=0; shift ;;
    *) die "unknown argument: $1 (usage: sanity.sh [--core LINE] [--controller-units] [--core-dependent] [--no-units | --units-only])" ;;
  esac
done
skipped=()
if ((core_dependent)); then
  for test in "${LINE_INDEPENDENT[@]}"; do skipped+=(--skip-test "$test"); done
fi

# ansible-test's shellcheck test is skipped with a mere warning when the
# program is missing: install it, so the test really runs.
if ((sanity)) && ! command -v shellcheck >/dev/null; then
  log "apt-get install shellcheck"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
fi

ensure_line_venv "$line"
venv="$(line_venv "$line")"
ensure_get_pip_standins "$venv"
export PATH="${venv}/bin:${PATH}"
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS
export ANSIBLE_TEST_PREFER_PODMAN=0 NO_COLOR=1

# pyenv's pythonX.Y shims answer only for the active version, and ansible-test
# passes no PYENV_VERSION on: put every installed Python on PATH under its own
# name, so that ansible-test finds each Python the line supports. The unit
# tests are Python 3 only (unittest.mock), and Python 2.7 has no venv module
# for ansible-test to make their virtualenv with: they get the Python 3 ones.
# What this run writes apart from a run of the other kind on the same line.
part="$( ((sanity)) && echo "" || echo "-units")"
units_path="$PATH"
if command -v pyenv >/dev/null; then
  bindir="${MATRIX_CACHE}/pythons-${line}${part}"
  rm -rf "$bindir"; mkdir -p "${bindir}/all" "${bindir}/py3"
  for exe in "$(pyenv root)"/versions/*/bin/python[23].[0-9]*; do
    [[ "$exe" =~ /python([23])\.[0-9]+$ && -x "$exe" ]] || continue
    ln -sfn "$exe" "${bindir}/all/${exe##*/}"
    if [[ "${BASH_REMATCH[1]}" == 3 ]]; then ln -sfn "$exe" "${bindir}/py3/${exe##*/}"; fi
  done
  units_path="${bindir}/py3:${PATH}"
  export PATH="${bindir}/all:${PATH}"
fi
# The Python 3 versions the unit tests run on: the line's controller Python
# with --controller-units; else the oldest and the newest Python 3 the line
# supports that this machine has. A change of the language or the standard
# library that breaks a module shows at one end of the range, compile and
# import check every version between, and each further Python costs the run
# as much again.
if ((controller_units)); then
  units_versions=("$(line_python_version "$line")")
else
  mapfile -t units_versions < <(
    supported=" $(python -c 'from ansible_test._util.target.common.constants import CONTROLLER_PYTHON_VERSIONS as c, REMOTE_ONLY_PYTHON_VERSIONS as r; print(" ".join(r + c))') "
    IFS=: read -ra dirs <<<"$units_path"
    for dir in "${dirs[@]}"; do
      for exe in "$dir"/python3.[0-9]*; do
        version="${exe##*/python}"
        [[ "$version" =~ ^3\.[0-9]+$ && "$supported" == *" $version "* ]] && "$exe" -c '' 2>/dev/null && echo "$version"
      done
    done | sort -t. -k2,2n -u | sed -n '1p;$p' | sort -u)
fi

tree="$(sync_collection_tree "${MATRIX_CACHE}/tree-${line}${part}")"
cd "$tree" || exit 1
label="ansible-test $(ansible --version | sed -n '1s/.*core \([^]]*\)].*/\1/p')"
report="${MATRIX_CACHE}/sanity-${line}${part}.out"
: >"$report"
rc=0
if ((sanity)); then
  log "${label} sanity"
  ansible-test sanity --venv --color no "${skipped[@]}" 2>&1 | tee "$report" || rc=1
fi
if ((units)); then
  log "${label} units"
  ((${#units_versions[@]})) || { echo "no Python 3 that ansible-core ${line} supports was found" | tee -a "$report"; rc=1; }
  for version in "${units_versions[@]}"; do
    PATH="$units_path" ansible-test units --venv --color no --python "$version" 2>&1 | tee -a "$report" || rc=1
  done
fi
# The verdicts, after the long output.
grep -E '^(ERROR|FATAL)|^=+ .*(passed|failed|error).* =+$' "$report" | grep -v '^FATAL: Command' >&2 || true
log "${label}: $( ((rc == 0)) && echo passed || echo FAILED)"
exit "$rc"
