"""Every bad input fails in argument specs or a preflight check, before any
change on the host, with a message that names the variable and what is allowed.

Each case runs the site playbook against a pristine host, the way a user would
(`ansible-playbook celeryops.celery.site -e ...`), and reads the run's JSON
report: the words must be in the failed task's own message (an argument-spec
failure reports the whole spec elsewhere, so the whole output would say
anything). It then checks that nothing on the host changed since a marker made
once, before the first case of this run, on whichever xdist worker gets there
first."""
import uuid

import pytest

from celery_checks import failed_tasks, json_report, run_site

testinfra_hosts = ["ansible://celery_workers"]

# What may change while nothing is provisioned: Ansible's own temp files,
# systemd's and the kernel's runtime state, apt's simulation in check mode.
WATCHED = ("/etc", "/srv", "/var/lib", "/var/log", "/usr/local", "/opt", "/home")
IGNORED = ("/var/lib/systemd", "/var/log/journal", "/var/lib/apt", "/var/lib/dpkg", "/var/log/apt")
# An existing user with UID 0 under another name; prepare.yml makes it.
UID0_USER = "toor"

CASES = {
    "unknown process manager": (
        {"celery_process_manager": "upstart"},
        ["celery_process_manager", "systemd", "supervisor"]),
    "root as the worker user": (
        {"celery_user": "root"},
        ["celery_user", "root"]),
    "UID 0 under another name": (
        {"celery_user": UID0_USER},
        ["celery_user '%s' exists with UID 0" % UID0_USER]),
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
    "bad app name": (
        {"celery_app_name": "my app"},
        ["celery_app_name", "letters, digits", "my app"]),
    "multi-line env value": (
        {"celery_env": {"GREETING": "hello\nworld"}},
        ["celery_env", "one-line", "GREETING"]),
    "relative env file": (
        {"celery_env_file": "celery.env"},
        ["celery_env_file", "absolute", "celery.env"]),
    "unknown loglevel": (
        {"celery_workers": [{"name": "default", "loglevel": "LOUD"}]},
        ["loglevel", "celery_workers", "DEBUG", "INFO", "LOUD"]),
    "empty queues": (
        {"celery_workers": [{"name": "default", "queues": []}]},
        ["celery_workers[0].queues", "non-empty list"]),
    "unknown worker field": (
        {"celery_workers": [{"name": "default", "colour": "red"}]},
        ["celery_workers.colour", "Supported parameters", "queues"]),
}


def _run_id(config):
    """One id per test run, the same in every xdist worker."""
    return getattr(config, "workerinput", {}).get("testrunuid") or _run_id.local


_run_id.local = uuid.uuid4().hex


def changed_paths(host, marker):
    prune = " -o ".join("-path %s" % path for path in IGNORED)
    cmd = host.run("find %s -xdev \\( %s \\) -prune -o -newer %s -print" % (" ".join(WATCHED), prune, marker))
    assert cmd.rc == 0, "find failed (%d): %s" % (cmd.rc, cmd.stderr)
    return [p for p in cmd.stdout.splitlines() if p]


@pytest.fixture(scope="module")
def marker(request, host):
    """The marker every case compares against: made once per run (`set -C`:
    only the first worker creates it; the others use it), a second older than
    any change a case could make. A marker that is missing or that does not
    date what comes after it fails every case."""
    path = "/root/.preflight-marker-%s" % _run_id(request.config)
    made = host.run("if (set -C; : > %s) 2>/dev/null; then sleep 1.1; echo made; fi" % path)
    assert made.rc == 0, made.stderr
    assert host.file(path).is_file, "the marker %s was not made" % path
    probe = "/tmp/.preflight-marker-probe-%s" % uuid.uuid4().hex
    dated = host.run("touch %s && find %s -newer %s && rm -f %s" % (probe, probe, path, probe))
    assert dated.rc == 0 and dated.stdout.strip() == probe, "the marker does not date later changes: %r" % dated.stdout
    return path


def failure_messages(result):
    """{host: [failed task's own message, ...]} from the run's JSON report."""
    messages = {}
    for task, host, msg in failed_tasks(json_report(result)):
        messages.setdefault(host, []).append("[%s] %s" % (task, msg))
    return messages


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_any_change(host, marker, case):
    extra_vars, expected = CASES[case]
    if case == "UID 0 under another name":
        entry = host.run("getent passwd %s" % UID0_USER).stdout.split(":")
        assert len(entry) > 2 and entry[2] == "0", "%s is not an existing user with UID 0: %r" % (UID0_USER, entry)
    result = run_site(extra_vars, callback="ansible.builtin.json")
    assert result.returncode != 0, "the play succeeded with bad input (%s):\n%s" % (case, result.stdout[-3000:])
    report = json_report(result)
    failures = failure_messages(result)
    assert failures, "no task failed (%s):\n%s\n%s" % (case, result.stdout[-3000:], result.stderr[-3000:])
    for hostname, messages in failures.items():
        assert any(all(words in msg for words in expected) for msg in messages), \
            "no failed task's message on %s says all of %r (%s):\n%s" % (hostname, expected, case, "\n".join(messages))
    for hostname, stats in report["stats"].items():
        assert stats.get("changed", 0) == 0, "%s reports changes before the error (%s): %r" % (hostname, case, stats)
    assert changed_paths(host, marker) == [], "the host changed before the error"
    assert host.run("getent passwd testapp").rc != 0, "the app user was created"


def test_good_input_passes_the_same_checks_in_check_mode(host, marker):
    # The positive control: the same host and inventory with valid input pass
    # every check, so the cases above fail for their input and nothing else.
    result = run_site({}, check=True, callback="ansible.builtin.json")
    report = json_report(result)
    assert result.returncode == 0, (failure_messages(result), result.stderr[-3000:])
    assert failed_tasks(report) == []
    assert report["stats"] and all(stats.get("failures", 0) == 0 for stats in report["stats"].values()), report["stats"]
    assert changed_paths(host, marker) == [], "check mode changed the host"
    # The shared checks (roles common and app, dependencies of every role)
    # run once per host and play, however many roles of the play need them.
    for shared in ("celeryops.celery.common : Check the app name", "celeryops.celery.app : Check and complete the worker list"):
        runs = shared_check_runs(report, shared)
        assert runs and all(count == 1 for count in runs.values()), "%s ran %r times (play, host)" % (shared, runs)


def shared_check_runs(report, name):
    """{(play, host): how many times the task `name` ran there} from a JSON report."""
    runs = {}
    for index, play in enumerate(report.get("plays", [])):
        for task in play.get("tasks", []):
            if task["task"]["name"] != name:
                continue
            for hostname, res in task.get("hosts", {}).items():
                if not res.get("skipped"):
                    runs[(index, hostname)] = runs.get((index, hostname), 0) + 1
    return runs
