#!/usr/bin/env bash
# Unit tests of the plugins and the checks that keep role defaults, argument
# specs and docs in step, run from the collection laid out as
# ansible_collections/celeryops/celery so that imports resolve as installed.
#
# Usage: units.sh [PATH ...]   (default: tests/unit tests/sanity)
source "$(dirname "$0")/common.sh"
activate_venv
tree="${CACHE_DIR}/unit-tree"
rm -rf "${tree}"
mkdir -p "${tree}/ansible_collections/celeryops"
rsync -a --exclude .cache --exclude .git "${REPO_ROOT}/" "${tree}/ansible_collections/celeryops/celery/"
paths=("$@")
((${#paths[@]})) || paths=(tests/unit tests/sanity)
cd "${tree}/ansible_collections/celeryops/celery" || exit 1
PYTHONPATH="${tree}" python -m pytest -p no:cacheprovider --import-mode=importlib -q "${paths[@]}"
