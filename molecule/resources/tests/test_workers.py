"""What a user of the collection sees on every provisioned worker host."""
import time

import pytest
from celery_checks import TIMED_INTERVAL, assert_held_task_ran_once, while_held

testinfra_hosts = ["ansible://celery_workers"]


def test_every_worker_is_running_and_starts_at_boot(celery):
    for worker in celery.workers:
        if celery.manager == "systemd":
            unit = celery.host.service(celery.service(worker))
            assert unit.is_running, "%s is not active" % celery.service(worker)
            assert unit.is_enabled, "%s is not enabled" % celery.service(worker)
        else:
            # RUNNING once it has stayed up for startsecs.
            assert celery.wait_for(lambda: "RUNNING" in celery.sh("supervisorctl status %s" % celery.service(worker), check=False).stdout,
                                   30, "%s to be RUNNING" % celery.service(worker))
        assert celery.main_pid(worker) > 0


def test_workers_run_as_the_app_user_never_root(celery):
    uid = celery.host.user(celery.user).uid
    assert uid != 0
    for worker in celery.workers:
        pid = celery.main_pid(worker)
        pids = [pid] + celery.children(pid)
        # threads, gevent, eventlet and solo run tasks in the main process.
        assert len(pids) >= 2 or celery.pools[worker] != "prefork", "the prefork pool of %s has no children" % worker
        for p in pids:
            owner = celery.sh("ps -o uid= -p %d" % p).stdout.strip()
            assert int(owner) == uid, "process %d runs as uid %s, not %s" % (p, owner, celery.user)


def test_env_file_is_private_to_root_and_the_app_group(celery):
    env = celery.host.file(celery.env_file)
    assert env.is_file
    assert env.mode == 0o640
    assert env.user == "root"
    assert env.group == celery.user
    assert "CELERY_BROKER_URL=" in env.content_string
    directory = celery.host.file(celery.env_file.rsplit("/", 1)[0])
    assert directory.mode == 0o750 and directory.user == "root"


def test_log_and_state_dirs_belong_to_the_app_user(celery):
    for path in ("/var/log/%s" % celery.app, "/var/lib/%s" % celery.app, "/run/%s" % celery.app):
        d = celery.host.file(path)
        assert d.is_directory, path
        assert d.user == celery.user and d.group == celery.user, path
        assert d.mode == 0o750, "%s has mode %o" % (path, d.mode)


def test_secret_values_stay_out_of_process_listings(celery):
    listing = celery.sh("ps -eo args").stdout
    assert "s3cr3t-value-must-not-leak" not in listing
    # Nor a broker's URL, whatever its scheme.
    for scheme in ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp"):
        assert "%s://" % scheme not in listing, scheme
    # ...yet the tasks do get them through the env file.
    assert celery.probe("call", "secret_env", "TESTAPP_SECRET")["result"] is True


def test_workers_answer_ping_through_the_broker(celery):
    for worker in celery.workers:
        assert celery.wait_for(lambda: celery.ping(celery.node(worker)), 30, "ping of %s" % celery.node(worker))


def test_a_published_task_is_executed_on_this_host(celery):
    result = celery.probe("call", "whoami", "--timeout", "30")
    assert result["state"] == "SUCCESS"
    assert result["result"]["hostname"] == celery.hostname
    assert result["result"]["uid"] == celery.host.user(celery.user).uid
    assert celery.probe("call", "add", "2", "3")["result"] == 5


def test_every_worker_executes_the_tasks_of_each_of_its_queues(celery):
    for worker, queues in celery.queues.items():
        main_pid = celery.main_pid(worker)
        processes = {main_pid, *celery.children(main_pid)}
        for queue in queues:
            result = celery.probe("call", "whoami", "--queue", queue, "--timeout", "30")
            assert result["state"] == "SUCCESS", "a task on %s: %s" % (queue, result)
            assert result["result"]["pid"] in processes, "a task on %s ran in %s, not in worker %s %s" % (
                queue, result["result"]["pid"], worker, sorted(processes))


@pytest.mark.one_host_per_manager
def test_a_task_in_flight_survives_a_restart(celery):
    worker = celery.workers[0]
    result, pool, old_pid, log = celery.restart_while_held(worker)
    # It ran to its end in the process it started in, once: not killed and
    # delivered again (acks_late and reject_on_worker_lost would hide that).
    assert_held_task_ran_once(result, pool)
    assert celery.main_pid(worker) not in (0, old_pid)
    assert "WorkerLostError" not in log
    assert "SIGTERM" not in log, log
    assert celery.wait_for(lambda: celery.ping(celery.node(worker)), 60, "ping after restart")


@pytest.mark.one_host_per_manager
def test_a_worker_killed_with_sigkill_comes_back(celery):
    worker = celery.workers[0]
    node = celery.node(worker)
    baseline = celery.start_up_seconds(worker)
    old_pid = celery.main_pid(worker)
    old_children = celery.children(old_pid)
    celery.sh("kill -KILL %d" % old_pid)
    started = time.monotonic()
    new_pid = celery.wait_for(lambda: celery.main_pid(worker) not in (0, old_pid) and celery.main_pid(worker), 120, "a new main process",
                              TIMED_INTERVAL)
    assert celery.wait_for(lambda: celery.ping(node), 300, "ping after SIGKILL", TIMED_INTERVAL)
    took = time.monotonic() - started
    # RestartSec (2 s in the scenarios; supervisor restarts at once) plus the
    # worker's start-up as just measured on this machine, with room for one
    # missed ping.
    bound = 2 + 2 * baseline + 10
    assert took <= bound, "the worker took %.1fs to come back; bound %.1fs (start-up %.1fs)" % (took, bound, baseline)
    print("%s: back and answering %.1fs after SIGKILL (a clean start takes %.1fs here)" % (node, took, baseline))
    alive = [p for p in old_children if celery.host.run("kill -0 %d" % p).rc == 0 and p not in celery.children(new_pid)]
    assert not alive, "children of the killed worker are still running: %s" % alive


def test_secret_values_stay_out_of_the_managers_files_and_logs(celery):
    places = "/etc/systemd/system /etc/supervisor /var/log/supervisor /var/log/%s /usr/local/libexec" % celery.app
    found = celery.sh("grep -rl 's3cr3t-value-must-not-leak' %s 2>/dev/null || true" % places).stdout.strip()
    assert found == "", "the secret is written in %s" % found
    journal = celery.sh("journalctl -q -o cat --no-pager | grep -c 's3cr3t-value-must-not-leak' || true").stdout.strip()
    assert journal == "0"


def test_the_app_user_cannot_control_the_process_manager(celery):
    worker = celery.workers[0]
    if celery.manager == "systemd":
        attempt = celery.host.run("runuser -u %s -- systemctl stop %s" % (celery.user, celery.service(worker)))
    else:
        attempt = celery.host.run("runuser -u %s -- supervisorctl stop %s" % (celery.user, celery.service(worker)))
        socket = celery.host.file("/var/run/supervisor.sock")
        assert socket.user == "root" and not socket.mode & 0o007, "supervisor's socket is open to other users"
    assert attempt.rc != 0 or "denied" in (attempt.stdout + attempt.stderr).lower(), attempt.stdout + attempt.stderr
    assert celery.main_pid(worker) > 0, "the app user stopped its own worker"


def test_a_stop_leaves_no_process_behind(celery):
    worker = celery.workers[0]
    node = celery.node(worker)
    pid = celery.main_pid(worker)
    family = [pid] + celery.children(pid)
    if celery.manager == "systemd":
        celery.sh("systemctl stop %s" % celery.service(worker))
    else:
        celery.sh("supervisorctl stop %s" % celery.service(worker))
    alive = [p for p in family if celery.host.run("kill -0 %d" % p).rc == 0]
    assert not alive, "processes left after stop: %s" % alive
    if celery.manager == "systemd":
        celery.sh("systemctl start %s" % celery.service(worker))
    else:
        celery.sh("supervisorctl start %s" % celery.service(worker))
    assert celery.wait_for(lambda: celery.ping(node, timeout=2), 40, "ping after start")


def test_the_manager_itself_stops_workers_warm_and_units_are_sandboxed(celery):
    if celery.manager == "systemd":
        for worker in celery.workers:
            unit = celery.service(worker)
            kill_mode = celery.sh("systemctl show -p KillMode --value %s" % unit).stdout.strip()
            assert kill_mode == "mixed", "%s has KillMode=%s" % (unit, kill_mode)
            line = celery.sh("systemd-analyze security %s | tail -n 1" % unit).stdout
            score = float(line.split(":")[1].split()[0])
            assert score <= 1.5, line
    else:
        kill_mode = celery.sh("systemctl show -p KillMode --value supervisor.service").stdout.strip()
        assert kill_mode == "mixed", "supervisor.service has KillMode=%s" % kill_mode
        conf = celery.host.file("/etc/supervisor/conf.d/%s.conf" % celery.app).content_string
        assert "stopasgroup=false" in conf and "killasgroup=true" in conf
        stop_supervisord_with_a_task_in_flight(celery)


def stop_supervisord_with_a_task_in_flight(celery):
    """Stopping supervisord (shutdown, upgrade) with a task in flight: the
    stop waits for the task, which finishes on its first delivery in the old
    pool; then supervisord starts again and its workers run tasks."""
    worker = celery.workers[0]
    log_offset = celery.log_size(worker)
    task_id, pool, release = celery.hold(worker)
    try:
        while_held(lambda: celery.sh("systemctl stop supervisor.service"),
                   lambda: "Warm shutdown" in celery.log_since(worker, 0, offset=log_offset),
                   lambda: celery.release(release), "the warm shutdown of %s to begin" % celery.node(worker), timeout=300)
        celery.sh("rm -f %s" % release)
        assert [p for p in pool if celery.host.run("kill -0 %d" % p).rc == 0] == [], "pool processes outlived supervisord"
        assert_held_task_ran_once(celery.probe("wait", task_id, "--timeout", "120"), pool)
        log = celery.log_since(worker, 0, offset=log_offset)
        assert "WorkerLostError" not in log, log[-3000:]
    finally:
        celery.sh("systemctl start supervisor.service")
    for name in celery.workers:
        assert celery.wait_for(lambda name=name: "RUNNING" in celery.sh("supervisorctl status %s" % celery.service(name), check=False).stdout,
                               60, "%s to run again" % name, interval=1)
        assert celery.wait_for(lambda name=name: celery.ping(celery.node(name), timeout=2), 60, "ping of %s" % celery.node(name))
    assert celery.probe("call", "add", "2", "3", "--timeout", "60")["result"] == 5
