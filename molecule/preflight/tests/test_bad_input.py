"""Every bad input fails in argument specs or a preflight check, before any
change on the host, with a message that names the variable and what is allowed.

Each case runs the site playbook against a pristine host, the way a user would
(`ansible-playbook celeryops.celery.site -e ...`), then checks that nothing on
the host changed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "resources", "tests"))

from celery_checks import run_site  # noqa: E402

testinfra_hosts = ["ansible://celery_workers"]

MARKER = "/root/.preflight-marker"
# What may change while nothing is provisioned: Ansible's own temp files,
# systemd's and the kernel's runtime state.
WATCHED = "/etc /srv /var/lib /var/log /usr/local /opt /home"
IGNORED = ("/var/lib/systemd/", "/var/log/journal/", "/var/lib/apt/", "/var/lib/dpkg/",
           "/var/log/apt/")  # apt's simulation log, written by check mode

CASES = {
    "unknown process manager": (
        {"celery_process_manager": "upstart"},
        ["celery_process_manager", "systemd", "supervisor"]),
    "root as the worker user": (
        {"celery_user": "root"},
        ["celery_user", "root"]),
    "UID 0 under another name": (
        {"celery_user": "0"},
        ["celery_user"]),
    "empty worker name": (
        {"celery_workers": [{"name": ""}]},
        ["celery_workers[0].name"]),
    "duplicate worker names": (
        {"celery_workers": [{"name": "default"}, {"name": "fast"}, {"name": "default"}]},
        ["celery_workers[2].name", "duplicate", "unique"]),
    "unsafe worker name": (
        {"celery_workers": [{"name": "a b/../c"}]},
        ["celery_workers[0].name", "safe unit name", "letters, digits"]),
    "concurrency below 1": (
        {"celery_workers": [{"name": "default", "concurrency": 0}]},
        ["celery_workers[0].concurrency", "1 or more"]),
    "unknown pool": (
        {"celery_workers": [{"name": "default", "pool": "greenlet"}]},
        ["pool", "prefork", "threads", "solo"]),
    "memory limit that is no size": (
        {"celery_workers": [{"name": "default", "memory_max": "lots"}]},
        ["celery_workers[0].memory_max", "MemoryMax=", "512M"]),
    "memory limit under supervisor": (
        {"celery_process_manager": "supervisor", "celery_workers": [{"name": "default", "memory_max": "200M"}]},
        ["celery_workers[0].memory_max", "max_memory_per_child", "KiB"]),
    "stop timeout below 1": (
        {"celery_stop_timeout": 0},
        ["celery_stop_timeout", "1 or more"]),
    "missing virtualenv": (
        {"celery_venv_create": False, "celery_venv": "/opt/nowhere/venv"},
        ["celery_venv", "/opt/nowhere/venv", "bin/celery"]),
    "env name that is not an identifier": (
        {"celery_env": {"NOT-A-NAME": "x"}},
        ["celery_env", "NOT-A-NAME"]),
    "empty celery_app": (
        {"celery_app": ""},
        ["celery_app"]),
    "relative log dir": (
        {"celery_log_dir": "logs"},
        ["celery_log_dir", "absolute"]),
}


def changed_paths(host):
    out = host.check_output("find %s -xdev -newer %s 2>/dev/null || true" % (WATCHED, MARKER))
    return [p for p in out.splitlines() if p and not (p + "/").startswith(IGNORED)]


@pytest.fixture(scope="module", autouse=True)
def marker(host):
    host.run("touch %s && sleep 1" % MARKER)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_any_change(host, case):
    extra_vars, expected = CASES[case]
    result = run_site(extra_vars)
    output = result.stdout + result.stderr
    assert result.returncode != 0, "the play succeeded with bad input (%s):\n%s" % (case, output[-3000:])
    for words in expected:
        assert words in output, "the error for %s does not say %r:\n%s" % (case, words, output[-3000:])
    assert changed_paths(host) == [], "the host changed before the error"
    assert host.run("getent passwd testapp").rc != 0, "the app user was created"


def test_good_input_passes_the_same_checks_in_check_mode(host):
    # The positive control: the same host and inventory with valid input pass
    # every check, so the cases above fail for their input and nothing else.
    result = run_site({}, check=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "failed=0" in output
    assert changed_paths(host) == [], "check mode changed the host"
