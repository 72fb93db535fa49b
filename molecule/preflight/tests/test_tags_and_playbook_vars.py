"""No tag skips the checks before any change: with --tags or --skip-tags of
any phase the play still runs every check and fails on bad input before any
change. And the playbooks' own variables (celery_hosts,
celery_release_serial, celery_release_max_fail_percentage) are checked
before any change, with a message naming the variable.

Same pristine host as test_bad_input.py (nothing here changes it)."""
import pytest

from failed_tasks import assert_failed_with, run_playbook

testinfra_hosts = ["ansible://celery_workers"]

MARKER = "/root/.tags-marker"
WATCHED = "/etc /srv /var/lib /var/log /usr/local /opt /home"
IGNORED = ("/var/lib/systemd/", "/var/log/journal/", "/var/lib/apt/", "/var/lib/dpkg/", "/var/log/apt/")

# With bad input for each role's checks, the checks still run and stop the
# play: with every phase's tag skipped at once (a check carrying any phase's
# tag instead of `always` would be skipped there), and with only a phase's tag
# other than the role's own selected. `preflight` is carried by no task (the
# checks are tagged `always`), so --tags preflight runs the checks alone.
PHASES = ["celery", "celery_env", "celery_logdirs", "celery_venv", "celery_systemd", "celery_supervisor",
          "celery_beat", "preflight"]
TAG_CASES = [
    ("--skip-tags", ",".join(PHASES), "env"),
    ("--skip-tags", ",".join(PHASES), "systemd"),
    ("--skip-tags", ",".join(PHASES), "beat"),
    ("--tags", "celery_systemd", "env"),
    ("--tags", "celery_env", "systemd"),
    ("--tags", "celery_logdirs", "beat"),
]
# Bad input each role's checks catch.
BAD = {
    "env": ({"celery_user": "root"}, ["celery_user", "root"]),
    "systemd": ({"celery_stop_timeout": 0}, ["celery_stop_timeout", "1 or more"]),
    "beat": ({"celery_beat_enabled": True, "celery_beat_host": "nosuchhost"},
             ["celery_beat_host 'nosuchhost' is not a host of this play"]),
}


def run(extra_vars, playbook="celeryops.celery.site", args=()):
    return run_playbook(playbook, extra_vars, args)


def changed_paths(host):
    out = host.check_output("find %s -xdev -newer %s 2>/dev/null || true" % (WATCHED, MARKER))
    return [p for p in out.splitlines() if p and not (p + "/").startswith(IGNORED)]


@pytest.fixture(scope="module", autouse=True)
def marker(host):
    host.run("touch %s && sleep 1" % MARKER)


@pytest.mark.parametrize("option,tags,role", TAG_CASES, ids=["%s %s, bad %s input" % c for c in TAG_CASES])
def test_no_tag_skips_the_checks(host, option, tags, role):
    extra_vars, words = BAD[role]
    result = run(extra_vars, args=(option, tags))
    assert_failed_with(result, words, "%s %s, bad input for %s" % (option, tags, role))
    assert changed_paths(host) == [], "the host changed before the error"
    assert host.run("getent passwd testapp").rc != 0, "the app user was created"


def test_tags_preflight_runs_the_checks_alone(host):
    # The positive control of the cases above: valid input, only the checks run.
    result = run({}, args=("--tags", "preflight"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Check that the distribution and its version are supported" in output
    assert "Install the worker units" not in output and "Create the app user" not in output
    assert changed_paths(host) == [], "the checks alone changed the host"


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


@pytest.mark.parametrize("case", sorted(PLAYBOOK_VARS))
def test_bad_playbook_variables_fail_before_any_change(host, case):
    playbook, extra_vars, words = PLAYBOOK_VARS[case]
    extra_vars = dict(extra_vars, celery_release_src="/nonexistent-release-src")
    result = run(extra_vars, playbook=playbook)
    assert_failed_with(result, words, case)
    assert changed_paths(host) == [], "the host changed before the error"
