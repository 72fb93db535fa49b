#!/usr/bin/env bash
# The collection's reference docs in docs/, generated from the sources with
# antsibull-docs: the module and filter docs (DOCUMENTATION of
# plugins/modules/*.py, plugins/filter/*.yml) and the roles' argument specs
# (roles/*/meta/argument_specs.yml), as simplified RST (plain docutils, no
# Sphinx extension needed). Checks that docs/ is what the sources generate and
# lints the docs as Ansible's docsite build does.
#
# Usage: docs.sh               check docs/ is current, lint
#        docs.sh --update      regenerate docs/
#        docs.sh --ensure-venv only make .cache/docs-venv (used by changelog.sh)
source "$(dirname "$0")/common.sh"

DOCS_VENV="${CACHE_DIR}/docs-venv"
DOCS_DIR="${REPO_ROOT}/docs"
# Marks the files antsibull-docs writes: only those are compared and replaced,
# so docs/ may also hold hand-written pages.
MARKER='.. Created with antsibull-docs'

# antsibull-docs, antsibull-changelog and galaxy-importer at the versions of
# tests/requirements-docs.txt, with ansible-core and the linters at those of
# tests/requirements.txt (its extras dropped: constraints take none).
ensure_docs_venv() {
  local req="${REPO_ROOT}/tests/requirements-docs.txt" tooling="${REPO_ROOT}/tests/requirements.txt"
  local stamp="${DOCS_VENV}/.requirements.sha256" want constraints python
  python="$(find_python "$(tooling_python_version)")" || exit 1
  want="$( (cat "$req" "$tooling"; "$python" -VV) | sha256sum | cut -d' ' -f1)"
  if [[ -x "${DOCS_VENV}/bin/antsibull-docs" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then return 0; fi
  log "creating the docs virtualenv in ${DOCS_VENV}"
  rm -rf "$DOCS_VENV"
  "$python" -m venv "$DOCS_VENV"
  constraints="${DOCS_VENV}/constraints.txt"
  sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$tooling" | grep -v '^[[:space:]]*$' >"$constraints"
  "${DOCS_VENV}/bin/pip" install -q --upgrade pip
  "${DOCS_VENV}/bin/pip" install -q -r "$req" -c "$constraints"
  printf '%s\n' "$want" >"$stamp"
}

# The generated files of a directory, relative to it.
generated_files() {
  local dir="$1" f
  [[ -d "$dir" ]] || return 0
  (cd "$dir" && for f in *.rst; do
    [[ -f "$f" ]] && [[ "$(head -n1 "$f")" == "$MARKER" ]] && printf '%s\n' "$f"
  done) || true
}

main() {
  local mode=check
  case "${1:-}" in
    "") ;;
    --update) mode=update ;;
    --ensure-venv) ensure_docs_venv; return 0 ;;
    *) die "unknown argument: $1 (usage: docs.sh [--update|--ensure-venv])" ;;
  esac
  ensure_docs_venv
  # shellcheck disable=SC1091
  source "${DOCS_VENV}/bin/activate"
  export NO_COLOR=1 ANSIBLE_NOCOLOR=1

  # The sources, laid out as an installed collection, are what ansible-doc
  # (run by antsibull-docs) reads; nothing else is on the collections path.
  local work="${CACHE_DIR}/docs-work" coll out
  rm -rf "$work"
  coll="${work}/collections/ansible_collections/celeryops/celery"
  out="${work}/out"
  mkdir -p "$coll" "$out"
  chmod 0755 "$out"   # antsibull-docs wants an output directory only its owner can write
  rsync -a --exclude /.cache --exclude /.git --exclude /tests/output "${REPO_ROOT}/" "${coll}/"
  # The copy lies in a directory the outer repository ignores, where the
  # linter, which lists a collection's files through git, would find none: a
  # repository of its own makes it list the copy's files, as in a clone.
  git -C "$coll" init -q
  export ANSIBLE_COLLECTIONS_PATH="${work}/collections"

  log "antsibull-docs $(antsibull-docs --version): generating"
  antsibull-docs collection --use-current --squash-hierarchy --fail-on-error \
    --output-format simplified-rst --no-add-antsibull-docs-version \
    --dest-dir "$out" celeryops.celery

  local rc=0 f
  if [[ "$mode" == update ]]; then
    mkdir -p "$DOCS_DIR"
    while read -r f; do [[ -n "$f" ]] && rm -f "${DOCS_DIR}/${f}"; done < <(generated_files "$DOCS_DIR")
    cp "${out}"/*.rst "${DOCS_DIR}/"
    log "docs/ regenerated: $(generated_files "$DOCS_DIR" | xargs)"
  else
    if diff -u <(generated_files "$DOCS_DIR") <(generated_files "$out") >/dev/null; then
      while read -r f; do
        diff -u "${DOCS_DIR}/${f}" "${out}/${f}" || rc=1
      done < <(generated_files "$out")
    else
      log "ERROR: docs/ has other generated files than the sources give:"
      diff -u <(generated_files "$DOCS_DIR") <(generated_files "$out") || true
      rc=1
    fi
    if ((rc)); then
      log "ERROR: docs/ is not what the sources generate: run tests/harness/docs.sh --update"
    else
      log "docs/ is current ($(generated_files "$out" | wc -l) files)"
    fi
  fi

  # The docsite's linter: schemas and markup of every plugin's and role's
  # docs, references to this collection's and ansible.builtin's content, and
  # rstcheck of the RST it renders.
  log "antsibull-docs lint-collection-docs"
  (cd "$coll" && antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs dependent \
      --output-format simplified-rst .) || rc=1
  if ((rc == 0)); then log "docs: passed"; else log "docs: FAILED"; fi
  return "$rc"
}
main "$@"
