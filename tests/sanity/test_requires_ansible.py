"""The ansible-core matrix tests exactly the lines meta/runtime.yml claims.

tests/matrix/requirements-<line>.txt pins one ansible-core release per line;
tests/harness/matrix.sh and sanity.sh run every line that has such a file.
Checked here:

- every pin belongs to its file's line and satisfies requires_ansible;
- the lines are exactly those requires_ansible admits, from the oldest it
  admits up to the line of the tooling virtualenv (tests/requirements.txt),
  the newest line that installs on the harness's Python;
- requires_ansible has an upper bound: it admits no line newer than the
  tooling line, which nothing tests;
- the tooling line's pin is the tooling virtualenv's ansible-core;
- every role's galaxy_info min_ansible_version is the oldest line claimed;
- every line names the controller Python it runs on ("# controller-python:
  X.Y"), one the line supports as a controller, and an older line never on a
  newer Python than a newer line (the oldest line keeps the oldest Python the
  collection supports as a controller in the matrix);
- with the index's release list (CELERYOPS_ANSIBLE_CORE_RELEASES, a file
  matrix.sh writes from `pip index versions ansible-core` run by the tooling
  line's Python, the newest, so that it lists every line's releases): no admitted line that installs
  here is missing, and a pin older than its line's newest release warns.
"""
import os
import pathlib
import re
import warnings

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "matrix"
PIN = re.compile(r"^ansible-core==(\d+\.\d+\.\d+)\s*$", re.MULTILINE)
CONTROLLER_PYTHON = re.compile(r"^# controller-python: *(\d+\.\d+) *$", re.MULTILINE)
# The controller Pythons each ansible-core line supports: CONTROLLER_PYTHON_VERSIONS
# of its ansible_test/_util/target/common/constants.py (ansible-core's
# Requires-Python gives the oldest only).
SUPPORTED_CONTROLLER_PYTHONS = {
    "2.19": ("3.11", "3.12", "3.13"),
    "2.20": ("3.12", "3.13", "3.14"),
    "2.21": ("3.12", "3.13", "3.14"),
}


def line_of(version):
    return "%d.%d" % Version(version).release[:2]


def requires_ansible():
    with open(ROOT / "meta" / "runtime.yml") as handle:
        return SpecifierSet(yaml.safe_load(handle)["requires_ansible"])


def pin_in(path):
    found = PIN.findall(path.read_text())
    assert len(found) == 1, "%s must pin ansible-core exactly once (ansible-core==X.Y.Z)" % path
    return found[0]


def matrix_pins():
    return {p.name[len("requirements-"):-len(".txt")]: pin_in(p) for p in sorted(MATRIX.glob("requirements-*.txt"))}


def tooling_pin():
    return pin_in(ROOT / "tests" / "requirements.txt")


def admits(spec, line):
    """Whether requires_ansible admits a line: its later releases satisfy it."""
    return spec.contains("%s.999" % line)


def expected_lines():
    spec, newest = requires_ansible(), Version(line_of(tooling_pin()))
    return [
        "%d.%d" % (2, minor)
        for minor in range(9, newest.minor + 1)
        if newest.major == 2 and admits(spec, "2.%d" % minor)
    ]


def test_every_pin_belongs_to_its_line_and_is_admitted():
    spec = requires_ansible()
    for line, version in matrix_pins().items():
        assert line_of(version) == line, "requirements-%s.txt pins ansible-core %s of another line" % (line, version)
        assert spec.contains(version), "ansible-core %s is outside requires_ansible %s" % (version, spec)


def test_matrix_lines_are_those_requires_ansible_claims():
    lines, expected = sorted(matrix_pins(), key=Version), expected_lines()
    assert expected, "requires_ansible %s admits no line up to the tooling line" % requires_ansible()
    assert lines == expected, (
        "meta/runtime.yml requires_ansible %s claims the lines %s (up to the tooling line of tests/requirements.txt), "
        "tests/matrix has requirements files for %s" % (requires_ansible(), expected, lines)
    )


def test_no_line_newer_than_the_tooling_line_is_claimed():
    spec, newest = requires_ansible(), Version(line_of(tooling_pin()))
    newer = ["%d.%d" % (newest.major, newest.minor + 1), "%d.0" % (newest.major + 1)]
    claimed = [line for line in newer if admits(spec, line) or spec.contains("%s.0" % line)]
    assert not claimed, (
        "meta/runtime.yml requires_ansible %s claims %s, newer than the tooling line %s, which nothing tests: "
        "give it an upper bound (<%s.0)" % (spec, claimed, line_of(tooling_pin()), newer[0])
    )


def test_tooling_line_pin_is_the_tooling_virtualenvs():
    pins = matrix_pins()
    tooling = tooling_pin()
    assert pins.get(line_of(tooling)) == tooling, (
        "tests/requirements.txt pins ansible-core %s, tests/matrix/requirements-%s.txt %s"
        % (tooling, line_of(tooling), pins.get(line_of(tooling)))
    )


def test_roles_min_ansible_version_is_the_oldest_line_claimed():
    oldest = expected_lines()[0]
    roles = sorted((ROOT / "roles").glob("*/meta/main.yml"))
    assert roles, "no role's meta/main.yml found"
    for path in roles:
        with open(path) as handle:
            found = str((yaml.safe_load(handle).get("galaxy_info") or {}).get("min_ansible_version"))
        assert found == oldest, "%s has min_ansible_version %s; requires_ansible claims %s as the oldest line" % (
            path.relative_to(ROOT), found, oldest)


def controller_pythons():
    found = {}
    for path in sorted(MATRIX.glob("requirements-*.txt")):
        names = CONTROLLER_PYTHON.findall(path.read_text())
        assert len(names) == 1, "%s must name its controller Python once (# controller-python: X.Y)" % path
        found[path.name[len("requirements-"):-len(".txt")]] = names[0]
    return found


def test_every_line_runs_on_a_controller_python_it_supports():
    pythons = controller_pythons()
    for line, python in pythons.items():
        supported = SUPPORTED_CONTROLLER_PYTHONS.get(line)
        assert supported, "no list of the controller Pythons ansible-core %s supports in this test: add it" % line
        assert python in supported, "requirements-%s.txt names Python %s; ansible-core %s supports %s" % (
            line, python, line, ", ".join(supported))
    by_line = [Version(pythons[line]) for line in sorted(pythons, key=Version)]
    assert by_line == sorted(by_line), "an older line runs on a newer Python than a newer line: %s" % pythons


def index_releases():
    path = os.environ.get("CELERYOPS_ANSIBLE_CORE_RELEASES")
    if not path:
        pytest.skip("no release list from the package index (tests/harness/matrix.sh provides one)")
    text = pathlib.Path(path).read_text()
    match = re.search(r"Available versions:\s*(.*)", text)
    assert match, "unexpected `pip index versions` output: %r" % text[:200]
    return [Version(v.strip()) for v in match.group(1).split(",") if v.strip()]


def test_no_installable_line_is_missing_and_pins_are_newest():
    spec, pins = requires_ansible(), matrix_pins()
    newest = {}
    for version in index_releases():
        if not version.is_prerelease:
            line = "%d.%d" % version.release[:2]
            newest[line] = max(newest.get(line, version), version)
    missing = sorted((line for line in newest if admits(spec, line) and line not in pins), key=Version)
    assert not missing, (
        "requires_ansible %s claims the lines %s, which install on this Python, and tests/matrix has no "
        "requirements file for them" % (spec, missing)
    )
    stale = ["%s (newest %s)" % (pins[line], newest[line]) for line in sorted(pins, key=Version)
             if line in newest and Version(pins[line]) < newest[line]]
    if stale:
        warnings.warn("ansible-core pins older than their line's newest release: %s" % ", ".join(stale))
