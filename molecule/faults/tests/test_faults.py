"""Faults a provisioned host survives, under systemd (fl-debian-12) and under
supervisor (fl-ubuntu-2404), proven with real tasks through the broker:

- a pool process killed with SIGKILL is replaced, the task next to it completes;
- a task that passes the worker's memory limit loses its pool process only;
- a broker outage is waited out by the running workers, with no restart and no
  task lost, and by a worker started while the broker is down;
- after a reboot every worker (and Beat) is back by itself;
- a worker removed from or renamed in celery_workers drains warm and is gone.

The checks run in file order, one after another (they stop the shared broker
and re-run the site playbook); each leaves the hosts as it found them."""
import concurrent.futures
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "resources", "tests"))

from celery_checks import CeleryHost, wait  # noqa: E402

SYSTEMD, SUPERVISOR = "fl-debian-12", "fl-ubuntu-2404"
BROKER = "fl-broker"
BEAT_HOST = SYSTEMD
OUTAGE = 30
# Tasks queued for a worker that the site playbook removes: DRAIN_TASKS of
# DRAIN_STEP seconds each, more than the playbook takes to reach the stop of
# that worker (15 to 45 s here), so that the stop finds one running.
DRAIN_TASKS, DRAIN_STEP = 15, 8


# -- helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def hosts():
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    found = {name: CeleryHost(testinfra.get_host("ansible://" + name, ansible_inventory=inventory)) for name in (SYSTEMD, SUPERVISOR)}
    assert found[SYSTEMD].manager == "systemd" and found[SUPERVISOR].manager == "supervisor"
    return found


def docker(*args, timeout=90):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def broker_up():
    try:
        return docker("exec", BROKER, "redis-cli", "ping", timeout=10).strip() == "PONG"
    except subprocess.SubprocessError:
        return False


def start_broker():
    docker("start", BROKER)
    wait(broker_up, 30, "the broker to answer")


@contextlib.contextmanager
def broker_restored():
    """Whatever the check does to the broker, it runs again afterwards."""
    try:
        yield
    finally:
        if not broker_up():
            start_broker()


def py(celery, code, timeout=60):
    """Runs Python in the app's environment on the host (the probe's way) and
    returns the JSON its last output line prints."""
    cmd = celery.in_app("timeout %d .venv/bin/python -c %s" % (timeout, shlex.quote(code)))
    return json.loads(celery.sh(cmd).stdout.strip().splitlines()[-1])


def send(celery, task, *args, queue=None):
    code = ("import json; from celery_testapp.app import app; "
            "print(json.dumps(app.send_task('celery_testapp.app.%s', args=%r, queue=%r).id))" % (task, list(args), queue))
    return py(celery, code)


def send_many(celery, count, task, *args, queue=None):
    """count tasks published at once; their ids in publishing order."""
    code = ("import json; from celery_testapp.app import app; "
            "print(json.dumps([app.send_task('celery_testapp.app.%s', args=%r, queue=%r).id for _ in range(%d)]))"
            % (task, list(args), queue, count))
    return py(celery, code)


def results(celery, task_ids, timeout):
    """State and value of each task, waiting up to timeout for all of them."""
    code = ("import json; from celery_testapp.app import app\n"
            "out = {}\n"
            "for i in %r:\n"
            "    r = app.AsyncResult(i)\n"
            "    try:\n"
            "        value = r.get(timeout=%d, propagate=False)\n"
            "    except Exception as error:\n"
            "        value = repr(error)\n"
            "    out[i] = [r.state, value if r.state == 'SUCCESS' else repr(value)]\n"
            "print(json.dumps(out))" % (list(task_ids), timeout))
    return py(celery, code, timeout=timeout + 30)


def stream(celery, key):
    """Sequence numbers the record task appended to key, in execution order."""
    code = "import json; from celery_testapp.app import app; print(json.dumps([json.loads(x)['seq'] for x in app.backend.client.lrange(%r, 0, -1)]))" % key
    return py(celery, code)


def pong(celery, node):
    cmd = celery.sh(celery.in_app("timeout 20 .venv/bin/celery -A celery_testapp inspect ping -d %s --timeout 2 --json" % node), check=False)
    return cmd.rc == 0 and node in cmd.stdout


def wait_for_pongs(hosts, timeout):
    """Seconds until every worker of every host answers ping."""
    started = time.monotonic()
    for celery in hosts.values():
        for worker in celery.workers:
            wait(lambda: pong(celery, celery.node(worker)), timeout - (time.monotonic() - started),
                 "%s to answer ping" % celery.node(worker))
    return time.monotonic() - started


def main_pids(hosts):
    return {(name, worker): celery.main_pid(worker) for name, celery in hosts.items() for worker in celery.workers}


def manager_state(celery, worker):
    """systemd: ActiveState and NRestarts (automatic restarts); supervisor: the program's state."""
    if celery.manager == "systemd":
        return sorted(celery.sh("systemctl show -p ActiveState -p NRestarts %s" % celery.service(worker)).stdout.split())
    return celery.sh("supervisorctl status %s" % celery.service(worker), check=False).stdout.split()[1:2]


UP = (["ActiveState=active", "NRestarts=0"], ["RUNNING"])


def log_mark(celery, worker):
    """Where the worker's log ends now: a time for the journal, a size for a file."""
    path = "/var/log/%s/worker-%s.log" % (celery.app, worker)
    size = celery.sh("stat -c %%s %s 2>/dev/null || echo 0" % path).stdout.strip()
    return int(celery.sh("date +%s").stdout), int(size)


def log_after(celery, worker, mark):
    """The worker's log written since mark."""
    since, size = mark
    if celery.manager == "systemd":
        return celery.sh("journalctl -q -o cat -u %s --since=@%d" % (celery.service(worker), since)).stdout
    return celery.sh("tail -c +%d /var/log/%s/worker-%s.log" % (size + 1, celery.app, worker), check=False).stdout


def worker_processes(celery, name):
    """PIDs of Celery processes running under the node name <name>@."""
    out = celery.sh("pgrep -u %s -f -- '--hostname=%s@' || true" % (celery.user, name)).stdout.split()
    return [int(p) for p in out]


# -- the checks -----------------------------------------------------------------
def test_a_pool_process_killed_with_sigkill_is_replaced_while_its_sibling_finishes_a_task(hosts):
    main = {name: celery.main_pid("default") for name, celery in hosts.items()}
    marks = {name: log_mark(celery, "default") for name, celery in hosts.items()}
    task = {name: send(celery, "sleep", 6) for name, celery in hosts.items()}
    victims = {}
    for name, celery in hosts.items():
        running = wait(lambda: [t for t in celery.active(celery.node("default")) if t["id"] == task[name]], 20,
                       "the sleep task to start on %s" % name)
        busy = running[0]["worker_pid"]
        others = [p for p in celery.children(main[name]) if p != busy]
        assert len(others) == 1, "%s: expected one more pool process besides %d, found %s" % (name, busy, others)
        victims[name] = (busy, others[0])
        celery.sh("kill -KILL %d" % others[0])
    for name, celery in hosts.items():
        busy, victim = victims[name]

        def replaced():
            kids = celery.children(main[name])
            return len(kids) == 2 and busy in kids and victim not in kids and kids
        kids = wait(replaced, 20, "a new pool process on %s" % name)
        state, value = results(celery, [task[name]], 30)[task[name]]
        assert state == "SUCCESS" and value["slept"] >= 6, (name, state, value)
        assert value["pid"] == busy, "%s: the task ran in %s, not in the process it started in (%d)" % (name, value["pid"], busy)
        assert celery.main_pid("default") == main[name], "%s: the worker restarted" % name
        assert manager_state(celery, "default") in UP
        log = log_after(celery, "default", marks[name])
        assert "pid:%d exited with 'signal 9 (SIGKILL)'" % victim in log, "%s: the worker did not see its child die:\n%s" % (name, log[-2000:])
        print("%s: pool process %d killed, replaced by %s; the sleep task in %d succeeded; main process %d kept"
              % (name, victim, sorted(set(kids) - {busy}), busy, main[name]))


def oom_kills(celery, cgroup):
    """OOM kills the kernel counted in the unit's memory cgroup (v1 or v2)."""
    for path in ("/sys/fs/cgroup/memory%s/memory.oom_control" % cgroup, "/sys/fs/cgroup%s/memory.events" % cgroup):
        out = celery.sh("cat %s" % path, check=False)
        if out.rc == 0:
            values = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            return int(values.get("oom_kill", 0))
    raise AssertionError("no memory cgroup found for %s" % cgroup)


def test_a_task_past_the_memory_limit_loses_its_pool_process_and_the_worker_goes_on(hosts):
    # systemd: MemoryMax=200M on the unit, 300 MiB asked: the kernel kills the
    # pool process inside the limit. acks_late + reject_on_worker_lost
    # redeliver the task; the once_key counter makes the second delivery hold
    # no memory, so the loop ends and the result says which delivery ran.
    celery = hosts[SYSTEMD]
    show = celery.sh("systemctl show -p MemoryMax -p OOMPolicy -p ControlGroup %s" % celery.service("mem")).stdout
    settings = dict(line.split("=", 1) for line in show.split())
    assert settings["MemoryMax"] == str(200 * 1024 * 1024) and settings["OOMPolicy"] == "continue", settings
    main = celery.main_pid("mem")
    [child] = celery.children(main)
    kills = oom_kills(celery, settings["ControlGroup"])
    mark = log_mark(celery, "mem")
    started = time.monotonic()
    result = celery.probe("call", "leak", "300", "1", "faults:leak:%s" % uuid.uuid4().hex, "--queue", "mem", "--timeout", "60")
    took = time.monotonic() - started
    assert result["state"] == "SUCCESS", result
    assert result["result"]["attempt"] == 2 and result["result"]["leaked_mb"] == 0, (
        "the first delivery should have been killed and the second have succeeded: %s" % result)
    assert oom_kills(celery, settings["ControlGroup"]) > kills, "no OOM kill was counted in %s" % settings["ControlGroup"]
    log = log_after(celery, "mem", mark)
    assert "pid:%d exited with 'signal 9 (SIGKILL)'" % child in log, log[-3000:]
    assert celery.main_pid("mem") == main and manager_state(celery, "mem") in UP
    assert child not in celery.children(main)
    after = celery.probe("call", "whoami", "--queue", "mem", "--timeout", "30")
    assert after["state"] == "SUCCESS" and after["result"]["pid"] != child, after
    print("systemd: pool process %d OOM-killed inside MemoryMax=200M, the task redelivered and done by %d in %.1fs; main %d kept"
          % (child, result["result"]["pid"], took, main))

    # supervisor: no cgroup limit; --max-memory-per-child=100000 (KiB) makes
    # Celery replace the pool process after the task that took it past it.
    celery = hosts[SUPERVISOR]
    main = celery.main_pid("mem")
    before = celery.probe("call", "whoami", "--queue", "mem", "--timeout", "30")["result"]["pid"]
    result = celery.probe("call", "leak", "150", "0", "faults:leak:%s" % uuid.uuid4().hex, "--queue", "mem", "--timeout", "60")
    assert result["state"] == "SUCCESS" and result["result"]["attempt"] == 1 and result["result"]["leaked_mb"] == 150, result
    assert result["result"]["pid"] == before, "the leak ran in another pool process than the task before it: %s" % result
    after = celery.probe("call", "whoami", "--queue", "mem", "--timeout", "30")["result"]["pid"]
    assert after != before, "pool process %d still runs tasks after passing max_memory_per_child" % before
    assert celery.main_pid("mem") == main and manager_state(celery, "mem") in UP
    print("supervisor: pool process %d replaced by %d after holding 150 MiB; main %d kept" % (before, after, main))


def control(celery, action, worker):
    manager = "systemctl" if celery.manager == "systemd" else "supervisorctl"
    return celery.sh("timeout 60 %s %s %s" % (manager, action, celery.service(worker)))


def pong_delays(hosts, workers, timeout):
    """Seconds until each worker answered ping, None for one that did not."""
    started, delays = time.monotonic(), {}
    for name, celery in hosts.items():
        for worker in workers:
            try:
                wait(lambda: pong(celery, celery.node(worker)), max(1, timeout - (time.monotonic() - started)), "")
                delays[(name, worker)] = round(time.monotonic() - started, 1)
            except AssertionError:
                delays[(name, worker)] = None
    return delays


@pytest.fixture(scope="module")
def outage(hosts):
    """One broker outage of OUTAGE seconds, seen by the two checks after it:
    the default workers run through it with tasks in flight and queued; the
    mem workers are started in it, with no broker. Records what it sees; the
    checks assert.

    The mem workers are stopped before the outage, not restarted in it: a
    worker stopped while its broker is down takes 40 to 70 s here to finish
    its warm shutdown (Celery's shutdown steps try to reach the broker)."""
    seen = {"key": "faults:outage:%s" % uuid.uuid4().hex, "in_flight": {}, "queued": {}, "marks": {}, "started": {}, "samples": {}}
    seen["before"] = main_pids(hosts)
    with broker_restored():
        for celery in hosts.values():
            control(celery, "stop", "mem")
        for name, celery in hosts.items():
            # Both pool processes of the default worker busy past the outage,
            # so that the record tasks wait in the broker's queue when it stops.
            seen["in_flight"][name] = send_many(celery, 2, "sleep", OUTAGE + 10)
            wait(lambda: len([t for t in celery.active(celery.node("default")) if t["id"] in seen["in_flight"][name]]) == 2, 20,
                 "both sleep tasks to run on %s" % name)
            seen["queued"][name] = [send(celery, "record", seq, seen["key"]) for seq in range(3)]
        docker("stop", BROKER)
        stopped = time.monotonic()
        # Publishing during the outage: Redis has no client-side buffer, and
        # Celery's own retry does not wait out a 30 s outage here: send_task
        # fails once the result backend's subscription gives up (about 20 s),
        # and with ignore_result it fails at once, because retry_policy does
        # not cover opening the connection (kombu's OperationalError). So the
        # publisher the app needs retries itself; it runs in the background
        # and counts its failed attempts.
        code = ("import time\n"
                "from celery_testapp.app import app\n"
                "failed = 0\n"
                "while True:\n"
                "    try:\n"
                "        app.send_task('celery_testapp.app.record', args=[100, %r], ignore_result=True)\n"
                "        break\n"
                "    except Exception:\n"
                "        failed += 1\n"
                "        time.sleep(1)\n"
                "print('published after', failed, 'failed attempts')\n" % seen["key"])
        for name, celery in hosts.items():
            celery.sh(celery.in_app("nohup timeout 150 .venv/bin/python -c %s >/tmp/faults-publisher.log 2>&1 &" % shlex.quote(code)))
            seen["marks"][name] = log_mark(celery, "mem")
            control(celery, "start", "mem")
            seen["started"][name] = celery.main_pid("mem")
        started = time.monotonic()
        time.sleep(15)
        for name, celery in hosts.items():
            # [:] keeps pgrep from finding the shell that runs it.
            seen["samples"][name] = {"pid": celery.main_pid("mem"), "state": manager_state(celery, "mem"),
                                     "publisher": celery.sh("pgrep -f 'faults[:]outage'", check=False).rc == 0}
        time.sleep(max(0, OUTAGE - (time.monotonic() - stopped)))
        seen["during"] = main_pids(hosts)
        seen["down"] = time.monotonic() - stopped
        seen["mem_down"] = time.monotonic() - started
        start_broker()
    seen["pongs"] = pong_delays(hosts, ("default", "mem"), 60)
    seen["after"] = main_pids(hosts)
    return seen


def test_running_workers_wait_out_a_broker_outage_without_a_restart_and_lose_no_task(hosts, outage):
    print("broker down %.0fs; the running workers answered ping within %s s of its return"
          % (outage["down"], {"%s/%s" % key: value for key, value in outage["pongs"].items() if key[1] == "default"}))
    for name, celery in hosts.items():
        assert outage["pongs"][(name, "default")] is not None, "%s: the default worker never answered after the outage" % name
        pid = outage["before"][(name, "default")]
        assert outage["during"][(name, "default")] == pid and outage["after"][(name, "default")] == pid, (
            "%s: the default worker restarted: %s" % (name, [outage[k][(name, "default")] for k in ("before", "during", "after")]))
        assert manager_state(celery, "default") in UP, (name, manager_state(celery, "default"))
        done = results(celery, outage["in_flight"][name] + outage["queued"][name], 60)
        assert all(state == "SUCCESS" for state, _value in done.values()), (name, done)

        def executed_records(celery=celery):
            seqs = stream(celery, outage["key"])
            return len(seqs) >= 4 and seqs
        executed = wait(executed_records, 30, "the record tasks on %s" % name)
        assert sorted(executed) == [0, 1, 2, 100], "%s: record tasks executed %s (each of 0, 1, 2 and 100 once expected)" % (name, executed)
        assert outage["samples"][name]["publisher"], "%s: the publisher was not waiting during the outage" % name
        published = celery.sh("cat /tmp/faults-publisher.log").stdout
        assert "published after" in published and int(published.split()[2]) >= 1, published
        print("%s: the in-flight and queued tasks all succeeded; the publisher failed %s times before the broker took its task"
              % (name, published.split()[2]))


def test_a_worker_started_while_the_broker_is_down_keeps_trying_and_comes_up_with_it(hosts, outage):
    print("mem workers started with the broker down (for %.0fs) answered ping within %s s of its return"
          % (outage["mem_down"], {"%s/%s" % key: value for key, value in outage["pongs"].items() if key[1] == "mem"}))
    for name, celery in hosts.items():
        pid = outage["started"][name]
        assert pid and pid != outage["before"][(name, "mem")], "%s: mem was not started anew" % name
        sample = outage["samples"][name]
        assert sample["pid"] == pid and sample["state"] in UP, "%s: 15 s after its start with no broker: %s" % (name, sample)
        assert outage["during"][(name, "mem")] == pid, "%s: mem exited while the broker was down" % name
        log = log_after(celery, "mem", outage["marks"][name])
        assert "Cannot connect to redis://" in log and "Trying again in" in log, "%s: no retry in the log:\n%s" % (name, log[-2000:])
        assert outage["pongs"][(name, "mem")] is not None, "%s: mem never answered after the outage" % name
        assert outage["after"][(name, "mem")] == pid, "%s: mem was restarted instead of connecting" % name
        result = celery.probe("call", "whoami", "--queue", "mem", "--timeout", "30")
        assert result["state"] == "SUCCESS" and result["result"]["pid"] in celery.children(pid), result


def test_after_a_reboot_every_worker_and_beat_are_back_by_themselves(hosts):
    names = sorted(hosts)
    for celery in hosts.values():
        # /run is a tmpfs: a marker in the run directory must be gone after the
        # reboot, the directory itself back (tmpfiles.d).
        celery.sh("touch /run/%s/faults-marker" % celery.app)
    # SIGRTMIN+3 asks systemd, PID 1, for a clean shutdown, as `reboot` does;
    # the container then stops and is started again.
    docker("kill", "--signal", "SIGRTMIN+3", *names)
    docker("wait", *names, timeout=120)
    docker("start", *names)
    booted = time.monotonic()
    for celery in hosts.values():
        celery.sh("timeout 60 systemctl is-system-running --wait", check=False)
    took = wait_for_pongs(hosts, 90)
    print("after the reboot every worker answered ping %.1fs after the containers started" % took)
    # PIDs repeat in a fresh container: the age of each main process shows it
    # was started after the boot.
    for (name, worker), pid in main_pids(hosts).items():
        assert pid, (name, worker)
        age = int(hosts[name].sh("ps -o etimes= -p %d" % pid).stdout)
        assert age <= time.monotonic() - booted + 2, "%s: %s runs for %ds, since before the reboot" % (name, worker, age)
    for name, celery in hosts.items():
        run_dir = celery.host.file("/run/" + celery.app)
        assert run_dir.is_directory and run_dir.user == celery.user and run_dir.mode == 0o750, name
        assert not celery.host.file("/run/%s/faults-marker" % celery.app).exists, "%s: /run survived the reboot" % name
        for worker in celery.workers:
            result = celery.probe("call", "whoami", "--queue", "mem" if worker == "mem" else "celery", "--timeout", "30")
            assert result["state"] == "SUCCESS" and result["result"]["pid"] in celery.children(celery.main_pid(worker)), (name, worker, result)
            assert manager_state(celery, worker) in UP
    beat = hosts[BEAT_HOST]
    assert beat.beat_pids(), "Beat is not running after the reboot"
    assert not hosts[SUPERVISOR].beat_pids()
    beat.probe("clear-ticks")
    wait(lambda: beat.probe("ticks"), 20, "a Beat tick after the reboot")
    print("Beat ticking %.1fs after the containers started" % (time.monotonic() - booted))


def run_site_on_each_host(extra_vars=None):
    """The site playbook once per host (--limit), all at once. In one play
    the linear strategy would run the supervisor and the systemd role one
    after the other, and one host's warm drain would hold up the other's."""
    def one(name):
        cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "celeryops.celery.site", "--limit", name,
               "-e", json.dumps(extra_vars or {})]
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = dict(zip((SYSTEMD, SUPERVISOR), pool.map(one, (SYSTEMD, SUPERVISOR))))
    for name, result in runs.items():
        assert result.returncode == 0, "%s:\n%s" % (name, (result.stdout + result.stderr)[-5000:])


def test_a_removed_worker_drains_warm_and_a_renamed_one_leaves_no_process(hosts):
    # default becomes main (a rename) and mem goes (a removal). mem works
    # through a queue of short sleep tasks, longer in all than the play takes
    # to reach its stop, so that whenever the stop comes one task is running.
    tasks, marks = {}, {}
    try:
        for name, celery in hosts.items():
            marks[name] = log_mark(celery, "mem")
            tasks[name] = send_many(celery, DRAIN_TASKS, "sleep", DRAIN_STEP, queue="mem")
            wait(lambda: any(t["id"] == tasks[name][0] for t in celery.active(celery.node("mem"))), 20, "the first task on mem@%s" % name)
        started = time.monotonic()
        run_site_on_each_host({"celery_workers": [{"name": "main"}]})
        print("site playbook with default renamed and mem removed: %.0fs" % (time.monotonic() - started))
        for name, celery in hosts.items():
            log = log_after(celery, "mem", marks[name])
            shutdown = log.find("Warm shutdown")
            assert shutdown >= 0, "%s: mem was not stopped warm:\n%s" % (name, log[-3000:])
            # The task running when the warm shutdown began: received before
            # it, finished after it.
            drained = [i for i in tasks[name] if 0 <= log.find("sleep[%s] received" % i) < shutdown < log.find("sleep[%s] succeeded" % i)]
            assert len(drained) == 1, "%s: no task ran through the warm shutdown of mem:\n%s" % (name, log[-3000:])
            state, value = results(celery, drained, 30)[drained[0]]
            assert state == "SUCCESS" and value["slept"] >= DRAIN_STEP, (name, state, value)
            assert "WorkerLostError" not in log, log[-3000:]
            for old in ("default", "mem"):
                assert worker_processes(celery, old) == [], "%s: processes of %s still run" % (name, old)
            if celery.manager == "systemd":
                units = celery.sh("ls /etc/systemd/system | grep '^testapp-worker' || true").stdout.split()
                assert units == ["testapp-worker-main.service"], units
            else:
                programs = celery.sh("supervisorctl status || true").stdout
                assert "worker-main" in programs and "worker-default" not in programs and "worker-mem" not in programs, programs
            wait(lambda: pong(celery, celery.node("main")), 30, "main@%s to answer" % name)
            assert celery.probe("call", "whoami", "--timeout", "30")["state"] == "SUCCESS"
            print("%s: task %s ran through the warm shutdown of the removed worker" % (name, drained[0]))
    finally:
        for celery in hosts.values():
            # The sleep tasks nobody started: not for the restored mem worker.
            celery.sh(celery.in_app("timeout 30 .venv/bin/celery -A celery_testapp purge -f -Q mem"), check=False)
        run_site_on_each_host()
    wait_for_pongs(hosts, 60)
    for name, celery in hosts.items():
        assert worker_processes(celery, "main") == [], "%s: main still runs after the restore" % name
