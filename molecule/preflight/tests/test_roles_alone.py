"""The roles used alone, the way a user applies them in their own playbook.

roles_alone.yml copies the test app and creates its virtualenv itself, applies
only celeryops.celery.env, .logdirs and .systemd as plain `roles:` entries (no
worker role), then celeryops.celery.beat in a play of its own, then .env,
.logdirs and .supervisor for a second app on the same code. Each app's worker
must answer ping and execute a task published to its queue as that app's
user, Beat must run once on the host and tick, and a second run must change
nothing.

This provisions the host that test_bad_input.py needs pristine, so it runs
last: its checks form one xdist group, handed out last (molecule.yml), and the
first of them waits until every check of the other files has finished, on
whichever worker it ran (each worker writes down what it finished)."""
import json
import os
import re
import tempfile
import time

import pytest

from celery_checks import SHARED_CHECKS, CeleryHost, run_site

testinfra_hosts = ["ansible://celery_workers"]
pytestmark = pytest.mark.xdist_group("roles_alone")

THIS_FILE = os.path.basename(__file__)
PLAYBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "roles_alone.yml")
EXTRA_VARS = {"celery_broker_url": "redis://preflight-broker:6379/0"}
SV_APP, SV_WORKER, SV_QUEUE = "testapp-sv", "sv", "sv"  # as in roles_alone.yml
PLUGIN = "celeryops-finished-checks"


# -- running after the other files' checks, under xdist ---------------------
def _finished_file(config):
    """One file per test run, shared by its xdist workers; None without xdist,
    where the files simply run in order."""
    uid = getattr(config, "workerinput", {}).get("testrunuid")
    return os.path.join(tempfile.gettempdir(), "celeryops-preflight-%s.finished" % uid) if uid else None


class _FinishedChecks:
    """Writes down every check of the other files that finished on this worker."""

    def __init__(self, path):
        self.path = path

    def pytest_collection_finish(self, session):
        # Nobody waits (or removes the file) when this file's checks are deselected.
        if not any(os.path.basename(str(item.path)) == THIS_FILE for item in session.items):
            self.path = None

    def pytest_runtest_logfinish(self, nodeid, location):
        if self.path and os.path.basename(nodeid.split("::")[0]) != THIS_FILE:
            with open(self.path, "a") as handle:
                handle.write(nodeid + "\n")


def pytest_generate_tests(metafunc):
    # Every xdist worker collects this file before it runs any check.
    path = _finished_file(metafunc.config)
    if path and not metafunc.config.pluginmanager.has_plugin(PLUGIN):
        metafunc.config.pluginmanager.register(_FinishedChecks(path), PLUGIN)


def wait_for_the_other_checks(request, timeout=1800):
    path = _finished_file(request.config)
    if path is None:
        return
    others = {item.nodeid for item in request.session.items if os.path.basename(str(item.path)) != THIS_FILE}
    deadline = time.monotonic() + timeout
    while True:
        finished = set()
        if os.path.exists(path):
            with open(path) as handle:
                finished = set(handle.read().splitlines())
        missing = others - finished
        if not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError("the checks that need the pristine host did not finish: %s" % sorted(missing))
        time.sleep(1)
    os.remove(path)


# -- the checks --------------------------------------------------------------
def recap_changed(output):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)}


@pytest.fixture(scope="module")
def first_run(request, host):
    """The playbook's first run; when it fails, every check here fails with its output."""
    wait_for_the_other_checks(request)
    result = run_site(EXTRA_VARS, playbook=PLAYBOOK)
    if result.returncode != 0:
        pytest.fail("roles_alone.yml failed:\n%s" % (result.stdout + result.stderr)[-4000:])
    return result


@pytest.fixture(scope="module")
def celery(host):
    return CeleryHost(host)


def test_the_roles_alone_provision_the_host(first_run):
    output = first_run.stdout + first_run.stderr
    assert "failed=0" in output
    for role in ("env", "logdirs", "systemd", "beat", "supervisor"):
        assert "TASK [celeryops.celery.%s : " % role in output, role
    assert "celeryops.celery.worker" not in output, "the worker role ran"
    # Each of the three plays runs the shared checks once (the common and app
    # roles are dependencies of every role it applies), not once per role.
    for shared in SHARED_CHECKS:
        assert output.count("TASK [%s]" % shared) == 3, (shared, output.count("TASK [%s]" % shared))


def test_the_worker_answers_ping(first_run, celery):
    assert celery.sh("systemctl is-active %s" % celery.service("default")).stdout.strip() == "active"
    celery.wait_for(lambda: celery.ping(celery.node("default")), 90, "the worker to answer ping", interval=1)


def test_a_published_task_is_executed_by_the_worker(first_run, celery):
    result = celery.probe("call", "whoami", "--timeout", "60")
    assert result["state"] == "SUCCESS", result
    where = result["result"]
    assert where["hostname"] == celery.hostname
    assert where["uid"] == int(celery.sh("id -u %s" % celery.user).stdout)
    assert where["cwd"] == celery.app_dir


def test_beat_runs_once_and_ticks(first_run, celery):
    assert celery.sh("systemctl is-active %s-beat.service" % celery.app).stdout.strip() == "active"
    ticks = celery.wait_for(lambda: celery.probe("ticks"), 60, "a Beat tick executed", interval=1)
    assert all(t["hostname"] == celery.hostname for t in ticks), json.dumps(ticks)
    assert len(celery.beat_pids()) == 1, celery.sh("ps -eo pid,user,args").stdout


def test_the_supervisor_role_alone_runs_the_second_app(first_run, host):
    sv = CeleryHost(host, manager="supervisor")
    sv.app = sv.user = SV_APP
    sv.workers = [SV_WORKER]
    sv.env_file = "/etc/%s/celery.env" % SV_APP
    sv.wait_for(lambda: "RUNNING" in sv.sh("supervisorctl status %s" % sv.service(SV_WORKER), check=False).stdout,
                30, "the supervisor program to run", interval=1)
    sv.wait_for(lambda: sv.ping(sv.node(SV_WORKER)), 90, "the supervisor worker to answer ping", interval=1)
    result = sv.probe("call", "whoami", "--queue", SV_QUEUE, "--timeout", "60")
    assert result["state"] == "SUCCESS", result
    assert result["result"]["uid"] == int(sv.sh("id -u %s" % SV_APP).stdout)
    assert sv.beat_pids() == [], "Beat runs for the second app too"


def test_a_second_run_changes_nothing(first_run):
    second = run_site(EXTRA_VARS, playbook=PLAYBOOK)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    changed = recap_changed(output)
    assert changed and not any(changed.values()), output[-6000:]
