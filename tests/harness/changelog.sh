#!/usr/bin/env bash
# Release checks: the changelog (antsibull-changelog lint of the fragments and
# of changelogs/changelog.yaml, galaxy.yml's version against the changelog, and
# a trial release in a copy when fragments wait for one), then Ansible Galaxy's
# own import checks (galaxy-importer) on the built tarball. Tools pinned in
# tests/requirements-docs.txt.
#
# Usage: changelog.sh [--no-importer]
source "$(dirname "$0")/common.sh"
source "${REPO_ROOT}/tests/matrix/lib.sh"

importer=1
case "${1:-}" in
  "") ;;
  --no-importer) importer=0 ;;
  *) die "unknown argument: $1 (usage: changelog.sh [--no-importer])" ;;
esac

bash "${REPO_ROOT}/tests/harness/docs.sh" --ensure-venv
# shellcheck disable=SC1091
source "${CACHE_DIR}/docs-venv/bin/activate"
export NO_COLOR=1 ANSIBLE_NOCOLOR=1
unset ANSIBLE_COLLECTIONS_PATH

rc=0
fail() { log "ERROR: $*"; rc=1; }

cd "$REPO_ROOT" || exit 1
log "antsibull-changelog $(antsibull-changelog --version): lint"
antsibull-changelog lint || fail "changelog fragments do not pass antsibull-changelog lint"
antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml \
  || fail "changelogs/changelog.yaml does not pass antsibull-changelog lint-changelog-yaml"

# galaxy.yml's version is the newest release of changelogs/changelog.yaml, or
# the release the fragments wait for: before the first release the version the
# fragments are named for (<version>-<topic>.yml), after it a newer version
# than the newest release. Prints "release" when fragments wait for one.
pending="$(python3 - <<'PY'
import pathlib, re, sys
import yaml
from packaging.version import Version

galaxy = Version(str(yaml.safe_load(open("galaxy.yml"))["version"]))
changes = yaml.safe_load(open("changelogs/changelog.yaml")) or {}
releases = sorted((Version(str(v)) for v in (changes.get("releases") or {})), reverse=True)
fragments = sorted(p.name for p in pathlib.Path("changelogs/fragments").iterdir()
                   if p.suffix in (".yml", ".yaml"))
errors = []
named = {m.group(1) for m in (re.match(r"^(\d+\.\d+\.\d+)-", f) for f in fragments) if m}
for version in sorted(named):
    if Version(version) != galaxy:
        errors.append("fragment(s) named for %s, galaxy.yml has version %s" % (version, galaxy))
if not releases:
    if not fragments:
        errors.append("no release in changelogs/changelog.yaml and no fragment for the first one (%s)" % galaxy)
elif galaxy < releases[0]:
    errors.append("galaxy.yml has version %s, older than the newest release %s" % (galaxy, releases[0]))
elif galaxy > releases[0] and not fragments:
    errors.append("galaxy.yml has version %s, newer than the newest release %s, and no fragment says what changed"
                  % (galaxy, releases[0]))
for error in errors:
    print("ERROR: " + error, file=sys.stderr)
print("galaxy.yml %s; newest release: %s; fragments: %d" % (galaxy, releases[0] if releases else "none", len(fragments)),
      file=sys.stderr)
if galaxy not in releases and fragments:
    print("release")
sys.exit(1 if errors else 0)
PY
)" || fail "galaxy.yml's version does not agree with the changelog"

# A trial release of galaxy.yml's version in a copy: the fragments must make a
# release and a CHANGELOG.rst that names it.
if [[ "$pending" == release ]]; then
  work="${CACHE_DIR}/changelog-work"
  rm -rf "$work"; mkdir -p "$work"
  rsync -a --exclude /.cache --exclude /.git --exclude /tests/output "${REPO_ROOT}/" "${work}/"
  # A repository of its own: antsibull-changelog lists the collection's files
  # (to find its new plugins) through git, and sees none in a folder the outer
  # repository ignores.
  git -C "$work" init -q
  version="$(python3 -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')"
  if (cd "$work" && antsibull-changelog release --date 2000-01-01 && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml) \
      && grep -q "^v${version//./\\.}$" "${work}/CHANGELOG.rst"; then
    log "trial release ${version}: CHANGELOG.rst has $(grep -c '^v[0-9]' "${work}/CHANGELOG.rst") release(s)"
  else
    fail "a trial release of ${version} from the fragments failed"
  fi
fi

if ((importer)); then
  ensure_tarball
  log "galaxy-importer $(python3 -c 'import importlib.metadata as m; print(m.version("galaxy-importer"))') on $(basename "$TARBALL")"
  # Galaxy's defaults: ansible-doc and an offline ansible-lint run, no
  # ansible-test (that needs a container image from a registry).
  out="${CACHE_DIR}/galaxy-importer"
  rm -rf "$out"; mkdir -p "$out"
  if (cd "$out" && python3 -m galaxy_importer.main "$TARBALL" 2>&1 | tee importer.log); then
    if grep -E '^(WARNING|ERROR)' "${out}/importer.log" >/dev/null; then
      fail "galaxy-importer reported warnings or errors (above)"
    fi
  else
    fail "galaxy-importer refused the tarball"
  fi
fi

if ((rc == 0)); then log "changelog and import checks: passed"; else log "changelog and import checks: FAILED"; fi
exit "$rc"
