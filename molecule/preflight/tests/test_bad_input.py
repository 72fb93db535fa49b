"""Every bad input fails in argument specs or a preflight check, before any
change on the host, with a message that names the variable and what is allowed.

The cases run the site playbook against the pristine host the way a user
would (`ansible-playbook celeryops.celery.site`), all in one run: each case is
a host of its own in that run (an alias of the same container, its bad input
as host variables), so one case's failure stops that host alone. From the
run's JSON report each case needs its own host to have failed with the words
in a failed task's own message (an argument-spec failure reports the whole
spec elsewhere, so the whole output would say anything) and to have changed
nothing; then nothing on the container may have changed since a marker made
before the run."""
import json
import os
import re
import uuid

import pytest

from celery_checks import SHARED_CHECKS, failed_tasks, json_report, run_site, shared_check_runs

testinfra_hosts = ["ansible://celery_workers"]
# The cases share one run: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("bad_input")

# What may change while nothing is provisioned: Ansible's own temp files,
# systemd's and the kernel's runtime state, apt's simulation in check mode.
WATCHED = ("/etc", "/srv", "/var/lib", "/var/log", "/usr/local", "/opt", "/home")
IGNORED = ("/var/lib/systemd", "/var/log/journal", "/var/lib/apt", "/var/lib/dpkg", "/var/log/apt")
# A file on the controller wherever the checks run (a broker TLS file's stand-in).
CONTROLLER_FILE = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "galaxy.yml")
# An existing user with UID 0 under another name; prepare.yml makes it.
UID0_USER = "toor"
# Flower turned on with a user, for the cases of one bad Flower setting each.
FLOWER = {"celery_flower_enabled": True, "celery_flower_basic_auth": [{"username": "ops", "password": "pass-word"}]}


def case_host(case):
    return "bad-" + re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")


# Beat on two hosts with RedBeat's lock, for the cases of one bad failover
# setting each: both hosts are cases of their own (in the play).
FAILOVER = {"celery_beat_enabled": True,
            "celery_beat_hosts": [case_host("Beat failover without RedBeat in the packages"),
                                  case_host("Beat failover without a Redis for the lock")],
            "celery_pip_packages": ["celery[redis]==5.7.0", "celery-redbeat==2.4.2"]}

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
    "autoscale with concurrency": (
        {"celery_workers": [{"name": "default", "autoscale": "4,1", "concurrency": 4}]},
        ["celery_workers[0] sets both autoscale and concurrency", "set one of them"]),
    "autoscale min above max": (
        {"celery_workers": [{"name": "default", "autoscale": "2,8"}]},
        ["celery_workers[0].autoscale must be 'max,min'", "min from 0 to max", "'2,8'"]),
    "autoscale on a pool that cannot grow": (
        {"celery_workers": [{"name": "default", "pool": "threads", "autoscale": "4,1"}]},
        ["celery_workers[0].autoscale", "prefork, gevent, eventlet", "the threads pool cannot"]),
    "soft time limit not below the hard one": (
        {"celery_workers": [{"name": "default", "time_limit": 30, "soft_time_limit": 30}]},
        ["celery_workers[0].soft_time_limit (30 s) must be below celery_workers[0].time_limit (30 s)"]),
    "time limit the pool ignores": (
        {"celery_workers": [{"name": "default", "pool": "eventlet", "time_limit": 30}]},
        ["celery_workers[0].time_limit would never fire", "eventlet pool", "prefork and gevent"]),
    "green pool the packages lack": (
        {"celery_workers": [{"name": "io", "pool": "gevent"}]},
        ["celery_workers io use pool 'gevent'", "celery_pip_packages", "celery[redis,gevent]"]),
    "stop timeout at the Redis redelivery timeout": (
        {"celery_broker_url": "redis://broker:6379/0", "celery_stop_timeout": 3600},
        ["celery_stop_timeout (3600 s) must be below celery_broker_redelivery_timeout (3600 s, the default for redis://)",
         "visibility_timeout", "runs a second time"]),
    "stop timeout above the RabbitMQ consumer timeout": (
        {"celery_broker_url": "amqp://app:secret@broker:5672/app", "celery_stop_timeout": 2400},
        ["celery_stop_timeout (2400 s) must be below celery_broker_redelivery_timeout (1800 s, the default for amqp://)",
         "consumer_timeout", "loses its channel"]),
    "stop timeout above a redelivery timeout set lower": (
        {"celery_broker_redelivery_timeout": "300", "celery_stop_timeout": 600},
        ["celery_stop_timeout (600 s) must be below celery_broker_redelivery_timeout (300 s, as set)"]),
    "redelivery timeout that is no number": (
        {"celery_broker_redelivery_timeout": "soon"},
        ["celery_broker_redelivery_timeout must be auto", "'soon'"]),
    "eventlet through Celery's extra alone": (
        {"celery_pip_packages": ["celery[redis,eventlet]==5.7.0"], "celery_workers": [{"name": "io", "pool": "eventlet"}]},
        ["celery_workers io use pool 'eventlet'", "add eventlet itself", "installs nothing on Python 3.10 and newer"]),
    "green pool the virtualenv lacks": (
        {"celery_venv_create": False, "celery_venv": "/opt/celery-without-gevent",
         "celery_workers": [{"name": "io", "pool": "gevent"}]},
        ["celery_workers io use pool 'gevent'", "celery_venv '/opt/celery-without-gevent'", "cannot import the 'gevent' package"]),
    "broker TLS file with a plain broker URL": (
        {"celery_broker_tls_ca_file": CONTROLLER_FILE},
        ["celery_broker_tls_ca_file name broker TLS files", "rediss:// or amqps://", "scheme is 'redis'"]),
    "broker TLS files beside TLS settings in the URL": (
        {"celery_broker_url": "rediss://broker:6379/0?ssl_cert_reqs=required", "celery_broker_tls_ca_file": CONTROLLER_FILE},
        ["celery_broker_tls_ca_file name broker TLS files", "carries TLS settings in its query", "in one place"]),
    "client certificate without its key": (
        {"celery_broker_url": "rediss://broker:6379/0", "celery_broker_tls_cert_file": CONTROLLER_FILE},
        ["celery_broker_tls_cert_file and celery_broker_tls_key_file must be set together"]),
    "broker CA bundle missing on the controller": (
        {"celery_broker_url": "amqps://broker:5671/", "celery_broker_tls_ca_file": "/nonexistent/broker-ca.pem"},
        ["celery_broker_tls_ca_file '/nonexistent/broker-ca.pem' is not a file on the controller"]),
    "Flower without a user": (
        {"celery_flower_enabled": True},
        ["celery_flower_basic_auth must list at least one user", "basic authentication"]),
    "Flower user without a password": (
        dict(FLOWER, celery_flower_basic_auth=[{"username": "ops"}]),
        ["celery_flower_basic_auth must list at least one user as a dict with the keys username and password"]),
    "Flower port out of range": (
        dict(FLOWER, celery_flower_port=70000),
        ["celery_flower_port a port number from 1 to 65535, got '70000'"]),
    "Flower address that is a host name": (
        dict(FLOWER, celery_flower_address="localhost"),
        ["celery_flower_address must be an IP address", "got 'localhost'"]),
    "Flower URL prefix with a blank": (
        dict(FLOWER, celery_flower_url_prefix="ops flower"),
        ["celery_flower_url_prefix empty or a URL path", "got 'ops flower'"]),
    "Flower as root": (
        dict(FLOWER, celery_flower_user="root"),
        ["celery_flower_user must be a user name other than root"]),
    "Flower on a host outside the inventory": (
        dict(FLOWER, celery_flower_hosts=["nosuchhost"]),
        ["celery_flower_hosts must be a non-empty list of inventory host names", "nosuchhost not in the inventory"]),
    "Flower on a TLS broker": (
        dict(FLOWER, celery_broker_url="rediss://broker:6379/0"),
        ["Flower does not yet run on a TLS broker (rediss://)", "celery_flower_enabled"]),
    # Beat on two case hosts with the lock: every case names the same two
    # (each host of the play must see the same Beat hosts).
    "Beat failover without RedBeat in the packages": (
        dict(FAILOVER, celery_pip_packages=["celery[redis]==5.7.0"]),
        ["celery_beat_hosts runs Beat with RedBeat's lock", "celery_pip_packages", "add celery-redbeat"]),
    "Beat failover without a Redis for the lock": (
        dict(FAILOVER, celery_broker_url="amqp://app:secret@broker:5672/app"),
        ["celery_beat_hosts keeps Beat's lock in Redis", "celery_beat_lock_url is not set", "celery_broker_url is amqp://..."]),
    "Beat failover with a lock URL that is no Redis": (
        dict(FAILOVER, celery_beat_lock_url="amqp://app:secret@broker:5672/app"),
        ["celery_beat_lock_url must be one line and a Redis URL", "scheme is 'amqp'"]),
    "Beat failover with a short lock timeout": (
        dict(FAILOVER, celery_beat_lock_timeout=5),
        ["celery_beat_lock_timeout must be 10 or more", "got 5"]),
    "Beat failover with a scheduler of its own": (
        dict(FAILOVER, celery_beat_extra_args=["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]),
        ["celery_beat_extra_args choose a scheduler", "celery_beat_hosts runs RedBeat's"]),
    "watchdog threshold under two intervals": (
        {"celery_watchdog_enabled": True, "celery_watchdog_threshold": 15},
        ["celery_watchdog_threshold whole seconds, at least twice celery_watchdog_interval", "got '15'"]),
    "watchdog ping timeout as long as its interval": (
        {"celery_watchdog_enabled": True, "celery_watchdog_ping_timeout": 10},
        ["celery_watchdog_ping_timeout whole seconds from 1 to less than celery_watchdog_interval", "got '10'"]),
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


@pytest.fixture(scope="module")
def cases_run(host, marker, tmp_path_factory):
    """One site run over every case: the hosts of the group celery_bad_input,
    a child of celery_workers (so they get its variables), each an alias of
    the scenario's worker host with its case's input."""
    target = host.backend.get_hostname()
    cases = {case_host(case): dict(extra_vars, ansible_host=target, ansible_connection="community.docker.docker")
             for case, (extra_vars, _words) in CASES.items()}
    assert len(cases) == len(CASES), "two cases share a host name"
    inventory = tmp_path_factory.mktemp("bad-input") / "cases.yml"
    inventory.write_text(json.dumps({"celery_bad_input": {"hosts": cases},
                                     "celery_workers": {"children": {"celery_bad_input": {}}}}))
    result = run_site(inventory=[os.environ["MOLECULE_INVENTORY_FILE"], str(inventory)], limit="celery_bad_input",
                      callback="ansible.builtin.json", forks=len(cases))
    report = json_report(result)
    assert set(report["stats"]) == set(cases), "the run did not cover every case: %s" % sorted(report["stats"])
    return result, report, failure_messages(result), changed_paths(host, marker)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_any_change(host, cases_run, case):
    expected = CASES[case][1]
    result, report, failures, changed = cases_run
    name = case_host(case)
    if case == "UID 0 under another name":
        entry = host.run("getent passwd %s" % UID0_USER).stdout.split(":")
        assert len(entry) > 2 and entry[2] == "0", "%s is not an existing user with UID 0: %r" % (UID0_USER, entry)
    messages = failures.get(name)
    assert messages, "no task failed for %s (%s); stats %r:\n%s" % (name, case, report["stats"].get(name), result.stderr[-3000:])
    assert any(all(words in msg for words in expected) for msg in messages), \
        "no failed task's message says all of %r (%s):\n%s" % (expected, case, "\n".join(messages))
    stats = report["stats"][name]
    assert stats.get("changed", 0) == 0, "%s reports changes before the error: %r" % (case, stats)
    assert changed == [], "the host changed before the errors: %s" % changed
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
    for shared in SHARED_CHECKS:
        runs = shared_check_runs(report, shared)
        assert runs and all(count == 1 for count in runs.values()), "%s ran %r times (play, host)" % (shared, runs)
