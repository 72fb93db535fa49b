"""No tag skips the checks before any change: with --tags or --skip-tags of
any phase the play still runs every check and fails on bad input before any
change. And the playbooks' own variables (celery_hosts,
celery_release_serial, celery_release_max_fail_percentage) are checked
before any change, with a message naming the variable.

Same pristine host as test_bad_input.py (nothing here changes it). The
plays change nothing, so they run four at a time, once, before the checks
read their results."""
import concurrent.futures

import pytest

from failed_tasks import assert_failed_with, run_playbook

testinfra_hosts = ["ansible://celery_workers"]
# The plays run once, in one xdist worker, four at a time (see runs()).
pytestmark = pytest.mark.xdist_group("tags")

MARKER = "/root/.tags-marker"
WATCHED = "/etc /srv /var/lib /var/log /usr/local /opt /home"
IGNORED = ("/var/lib/systemd/", "/var/log/journal/", "/var/lib/apt/", "/var/lib/dpkg/", "/var/log/apt/")

# Each phase's tag skipped, or only one phase's tag selected, with bad input
# for a role's checks: the checks still run and stop the play. `preflight`
# is carried by no task (the checks are tagged `always`), so --tags preflight
# runs the checks alone.
PHASES = ["celery", "celery_env", "celery_logdirs", "celery_venv", "celery_systemd", "celery_supervisor",
          "celery_beat", "preflight"]
TAG_CASES = [
    ("--skip-tags", "celery", "env"),
    ("--skip-tags", "celery_env", "env"),
    ("--skip-tags", "celery_systemd", "systemd"),
    ("--skip-tags", "celery_beat", "beat"),
    ("--skip-tags", "preflight", "env"),
    ("--skip-tags", ",".join(PHASES), "systemd"),
    ("--tags", "celery_systemd", "env"),
    ("--tags", "celery_env", "systemd"),
    ("--tags", "celery_logdirs", "beat"),
    ("--tags", "celery_venv", "env"),
    ("--tags", "celery_beat", "systemd"),
    ("--tags", "preflight", "beat"),
]
# Bad input each role's checks catch.
BAD = {
    "env": ({"celery_user": "root"}, ["celery_user", "root"]),
    "systemd": ({"celery_stop_timeout": 0}, ["celery_stop_timeout", "1 or more"]),
    "beat": ({"celery_beat_enabled": True, "celery_beat_host": "nosuchhost"},
             ["celery_beat_host 'nosuchhost' is not a host of this play"]),
}


def changed_paths(host):
    out = host.check_output("find %s -xdev -newer %s 2>/dev/null || true" % (WATCHED, MARKER))
    return [p for p in out.splitlines() if p and not (p + "/").startswith(IGNORED)]


PLAYBOOK_VARS = {
    "serial 0": ("celeryops.celery.release", {"celery_release_serial": 0}, ["celery_release_serial", "0"]),
    "serial as a word": ("celeryops.celery.release", {"celery_release_serial": "half"}, ["celery_release_serial", "half"]),
    "serial over 100%": ("celeryops.celery.rollback", {"celery_release_serial": "150%"}, ["celery_release_serial", "150%"]),
    "fail percentage over 100": ("celeryops.celery.release", {"celery_release_max_fail_percentage": 150},
                                 ["celery_release_max_fail_percentage", "0 to 100", "150"]),
    "fail percentage below 0": ("celeryops.celery.rollback", {"celery_release_max_fail_percentage": -1},
                                ["celery_release_max_fail_percentage", "0 to 100"]),
    "host pattern as a list": ("celeryops.celery.site", {"celery_hosts": ["celery_workers"]}, ["celery_hosts"]),
}
# The positive control of the tag cases: valid input, only the checks run.
CHECKS_ALONE = ("--tags", "preflight")


@pytest.fixture(scope="module")
def runs(host):
    """{case: CompletedProcess} of every play here, and the paths changed
    since a marker made before the first of them."""
    host.run("touch %s && sleep 1" % MARKER)
    plays = {CHECKS_ALONE: ("celeryops.celery.site", {}, CHECKS_ALONE)}
    for option, tags, role in TAG_CASES:
        plays[(option, tags, role)] = ("celeryops.celery.site", BAD[role][0], (option, tags))
    for case, (playbook, extra_vars, _words) in PLAYBOOK_VARS.items():
        plays[case] = (playbook, dict(extra_vars, celery_release_src="/nonexistent-release-src"), ())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {case: pool.submit(run_playbook, playbook, extra_vars, args)
                   for case, (playbook, extra_vars, args) in plays.items()}
        results = {case: future.result() for case, future in futures.items()}
    return results, changed_paths(host)


@pytest.mark.parametrize("option,tags,role", TAG_CASES, ids=["%s %s, bad %s input" % c for c in TAG_CASES])
def test_no_tag_skips_the_checks(host, runs, option, tags, role):
    results, changed = runs
    assert_failed_with(results[(option, tags, role)], BAD[role][1], "%s %s, bad input for %s" % (option, tags, role))
    assert changed == [], "the host changed before the errors"
    assert host.run("getent passwd testapp").rc != 0, "the app user was created"


def test_tags_preflight_runs_the_checks_alone(runs):
    results, changed = runs
    output = results[CHECKS_ALONE].stdout + results[CHECKS_ALONE].stderr
    assert results[CHECKS_ALONE].returncode == 0, output[-4000:]
    assert "Check that the distribution and its version are supported" in output
    assert "Install the worker units" not in output and "Create the app user" not in output
    assert changed == [], "the checks alone changed the host"


@pytest.mark.parametrize("case", sorted(PLAYBOOK_VARS))
def test_bad_playbook_variables_fail_before_any_change(runs, case):
    results, changed = runs
    assert_failed_with(results[case], PLAYBOOK_VARS[case][2], case)
    assert changed == [], "the host changed before the error"
