"""Faults a provisioned host survives, under systemd (fl-debian-12) and under
supervisor (fl-ubuntu-2404), proven with real tasks through the broker:

- a pool process killed with SIGKILL is replaced, the task next to it completes;
- a task that passes the worker's memory limit loses its pool process only;
- a broker outage is waited out by the running workers, with no restart and no
  task lost, and by a worker started while the broker is down;
- after a reboot every worker (and Beat, under either manager) is back by itself;
- a worker removed from or renamed in celery_workers drains warm and is gone.

The checks run in file order, one after another (they stop the shared broker
and re-run the site playbook); each leaves the hosts as it found them, but the
last, which moves Beat. None is sized to the machine's speed: each waits for
the state it needs (a task running, the play over, the broker back), and a
bound on a duration is measured against a baseline taken in the same run or
read from the kernel's start times."""
import concurrent.futures
import contextlib
import json
import os
import re
import shlex
import subprocess
import time
import uuid

import pytest

from celery_checks import RUNNING_WITHOUT_RESTART, TIMED_INTERVAL, answer_after_outage_bound, docker, run_site, wait
from faults_broker import BROKER, broker_restored, start_broker

SYSTEMD, SUPERVISOR = "fl-debian-12", "fl-ubuntu-2404"
BEAT_HOST = SYSTEMD
OUTAGE = 30
# Sleep tasks of DRAIN_STEP seconds keep the worker that the site playbook
# removes busy until the playbook is over (see feed()), so that its stop finds
# one running however long the playbook takes to reach it.
DRAIN_STEP = 8


# -- helpers ------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def managers(hosts):
    """The hosts (conftest.py) are the two this file names, one per manager."""
    assert set(hosts) == {SYSTEMD, SUPERVISOR}
    assert hosts[SYSTEMD].manager == "systemd" and hosts[SUPERVISOR].manager == "supervisor"


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


# How long a ping waits for the worker's reply: generous, since a loaded
# machine answers slowly and a missed reply would count as a worker down.
PING_REPLY = 5


def pong(celery, *nodes):
    """Whether every one of the nodes answers one ping."""
    cmd = celery.sh(celery.in_app("timeout 60 .venv/bin/celery -A celery_testapp inspect ping -d %s --timeout %d --json"
                                  % (",".join(nodes), PING_REPLY)), check=False)
    return cmd.rc == 0 and all(node in cmd.stdout for node in nodes)


def wait_for_pongs(hosts, timeout):
    """Seconds until every worker of every host answers ping."""
    started = time.monotonic()
    for celery in hosts.values():
        for worker in celery.workers:
            wait(lambda: pong(celery, celery.node(worker)), timeout - (time.monotonic() - started),
                 "%s to answer ping" % celery.node(worker), TIMED_INTERVAL)
    return time.monotonic() - started


def main_pids(hosts):
    return {(name, worker): celery.main_pid(worker) for name, celery in hosts.items() for worker in celery.workers}


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
    # The task runs until the test releases it, after the kill and the
    # replacement: it is in flight through both, however slow the machine.
    release_file = "/var/lib/%s/faults-release-%s" % (hosts[SYSTEMD].app, uuid.uuid4().hex)
    main = {name: celery.main_pid("default") for name, celery in hosts.items()}
    marks = {name: log_mark(celery, "default") for name, celery in hosts.items()}
    task = {name: send(celery, "hold", release_file) for name, celery in hosts.items()}
    try:
        kill_a_sibling_and_check(hosts, task, main, marks, release_file)
    finally:
        # A failed check leaves no hold task behind to take a pool process
        # from the checks after it.
        for celery in hosts.values():
            celery.release(release_file)
        for name, celery in hosts.items():
            results(celery, [task[name]], 60)
            celery.sh("rm -f %s" % release_file)


def kill_a_sibling_and_check(hosts, task, main, marks, release_file):
    victims = {}
    for name, celery in hosts.items():
        running = wait(lambda: [t for t in celery.active(celery.node("default")) if t["id"] == task[name]], 60,
                       "the hold task to start on %s" % name)
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
        kids = wait(replaced, 60, "a new pool process on %s" % name)
        # Beat's tick runs on this worker too: only the hold tasks count.
        held = [t["id"] for t in celery.active(celery.node("default")) if t["name"].endswith(".hold")]
        assert held == [task[name]], "%s: the task is no longer in flight: %s" % (name, held)
        celery.release(release_file)
        state, value = results(celery, [task[name]], 60)[task[name]]
        assert state == "SUCCESS" and value["released"] and value["attempt"] == 1, (name, state, value)
        assert value["pid"] == busy, "%s: the task ran in %s, not in the process it started in (%d)" % (name, value["pid"], busy)
        assert celery.main_pid("default") == main[name], "%s: the worker restarted" % name
        assert celery.manager_state("default") in RUNNING_WITHOUT_RESTART
        log = log_after(celery, "default", marks[name])
        assert "pid:%d exited with 'signal 9 (SIGKILL)'" % victim in log, "%s: the worker did not see its child die:\n%s" % (name, log[-2000:])
        print("%s: pool process %d killed, replaced by %s; the task held in %d through it succeeded once; main process %d kept"
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
    assert celery.main_pid("mem") == main and celery.manager_state("mem") in RUNNING_WITHOUT_RESTART
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
    assert celery.main_pid("mem") == main and celery.manager_state("mem") in RUNNING_WITHOUT_RESTART
    print("supervisor: pool process %d replaced by %d after holding 150 MiB; main %d kept" % (before, after, main))


def pong_delays(hosts, workers, timeout):
    """Seconds until each worker answered ping, None for one that did not;
    every worker is waited for at once, from the same moment."""
    started = time.monotonic()

    def delay(pair):
        name, worker = pair
        celery = hosts[name]
        try:
            wait(lambda: pong(celery, celery.node(worker)), timeout, "", TIMED_INTERVAL)
        except AssertionError:
            return None
        return round(time.monotonic() - started, 1)
    pairs = [(name, worker) for name in hosts for worker in workers]
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        return dict(zip(pairs, pool.map(delay, pairs)))


def unacked_ids(celery):
    """Ids of the tasks the broker (Redis) holds as delivered but not
    acknowledged on the host's database: each of them would be delivered again
    after the visibility timeout, i.e. run twice."""
    code = ("import json; from celery_testapp.app import app\n"
            "with app.connection_for_write() as conn:\n"
            "    client = conn.default_channel.client\n"
            "    print(json.dumps([json.loads(v)[0]['headers']['id'] for v in client.hvals('unacked')]))")
    return py(celery, code)


def succeeded(log, task_id):
    """How many times the worker's log says the task completed."""
    return log.count("[%s] succeeded" % task_id)


# How long the outage waits for each default worker to log the lost
# connection before it releases the tasks in flight. Kombu's Redis transport
# notices a lost connection when it next uses it, and a worker whose pool
# processes are all busy with its whole prefetch window reads nothing from the
# broker: it logged the loss 6 to 73 s after the stop here, and once not in
# 300 s. A worker that has not noticed by then does when it acknowledges the
# released tasks (acks_late), inside the outage either way.
LOSS_LOGGED_WITHIN = 60


def loss_logged(celery, mark, stopped):
    """Seconds from the broker's stop (time.monotonic() `stopped`) until the
    default worker's log says it lost the connection, or None if it did not
    say so within LOSS_LOGGED_WITHIN seconds of the stop."""
    while True:
        if "Connection to broker lost" in log_after(celery, "default", mark):
            return round(time.monotonic() - stopped)
        if time.monotonic() - stopped > LOSS_LOGGED_WITHIN:
            return None
        time.sleep(1)


@pytest.fixture(scope="module")
def outage(hosts):
    """One broker outage, seen by the two checks after it: the default workers
    run through it with two tasks in flight and three queued; the mem workers
    are started in it, with no broker. Records what it sees; the checks
    assert.

    Nothing here is sized to the machine's speed. The two tasks in flight run
    until the test releases them, which it does once both workers have logged
    the lost connection (or LOSS_LOGGED_WITHIN s after the stop), and the
    broker comes back only OUTAGE seconds after
    its stop and at least 10 s after that release. So, always, they are in
    flight when the connection is lost and end inside the outage, where their
    results cannot be stored nor their messages acknowledged. They hold both
    pool processes and, unacknowledged (acks_late), the worker's whole
    prefetch window, so the queued tasks wait in the broker, not in the
    worker.

    The mem workers are stopped before the outage, not restarted in it: a
    worker stopped while its broker is down takes 40 to 70 s here to finish
    its warm shutdown (Celery's shutdown steps try to reach the broker)."""
    key = uuid.uuid4().hex
    seen = {"key": "faults:outage:%s" % key, "in_flight": {}, "queued": {}, "marks": {}, "default_marks": {}, "started": {},
            "samples": {}, "after_return": {}, "baseline": {}}
    release_file = "/var/lib/%s/faults-release-%s" % (next(iter(hosts.values())).app, key)
    seen["before"] = main_pids(hosts)
    try:
        run_outage(hosts, seen, release_file)
    finally:
        # Released whatever happened: held tasks left running would hold the
        # default workers' pool processes through the checks after this one.
        for celery in hosts.values():
            celery.release(release_file, check=False)
    seen["pongs"] = pong_delays(hosts, ("default", "mem"), 180)
    seen["after"] = main_pids(hosts)
    for name, celery in hosts.items():
        seen["after_return"][name] = send(celery, "record", 200, seen["key"])
    for celery in hosts.values():
        celery.sh("rm -f %s" % release_file)
    return seen


def run_outage(hosts, seen, release_file):
    """The outage of the outage fixture: its records go into seen."""
    with broker_restored():
        for name, celery in hosts.items():
            celery.control("stop", "mem", timeout=60)
            seen["baseline"][name] = celery.ping_seconds("default")
            seen["default_marks"][name] = log_mark(celery, "default")
        for name, celery in hosts.items():
            # Both pool processes of the default worker busy until released,
            # so that the record tasks wait in the broker's queue when it stops.
            seen["in_flight"][name] = send_many(celery, 2, "hold", release_file)
            wait(lambda: len([t for t in celery.active(celery.node("default")) if t["id"] in seen["in_flight"][name]]) == 2,
                 60, "both hold tasks to run on %s" % name)
            seen["queued"][name] = [send(celery, "record", seq, seen["key"]) for seq in range(3)]
        docker("stop", BROKER)
        seen["stopped_at"] = time.time()
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
            celery.sh(celery.in_app("nohup timeout 900 .venv/bin/python -c %s >/tmp/faults-publisher.log 2>&1 &" % shlex.quote(code)))
            seen["marks"][name] = log_mark(celery, "mem")
            celery.control("start", "mem", timeout=60)
            seen["started"][name] = celery.main_pid("mem")
        started = time.monotonic()
        seen["lost_seen"] = {name: loss_logged(celery, seen["default_marks"][name], stopped) for name, celery in hosts.items()}
        for celery in hosts.values():
            celery.release(release_file)
        released = time.monotonic()
        time.sleep(max(0, 15 - (time.monotonic() - started)))
        for name, celery in hosts.items():
            # [:] keeps pgrep from finding the shell that runs it.
            seen["samples"][name] = {"pid": celery.main_pid("mem"), "state": celery.manager_state("mem"),
                                     "publisher": celery.sh("pgrep -f 'faults[:]outage'", check=False).rc == 0}
        time.sleep(max(0, OUTAGE - (time.monotonic() - stopped), 10 - (time.monotonic() - released)))
        seen["during"] = main_pids(hosts)
        seen["down"] = time.monotonic() - stopped
        seen["mem_down"] = time.monotonic() - started
        seen["restarted_at"] = time.time()
        start_broker()


def test_running_workers_wait_out_a_broker_outage_without_a_restart_and_lose_no_task(hosts, outage):
    bound = {name: answer_after_outage_bound(outage["baseline"][name], PING_REPLY) for name in hosts}
    print("broker down %.0fs (the workers logged the lost connection after %s s; None: not within %d s, before the tasks "
          "in flight were released); the running workers answered ping %s s "
          "after its return (bounds %s s, ping baseline %s s)"
          % (outage["down"], outage["lost_seen"], LOSS_LOGGED_WITHIN,
             {"%s/%s" % key: value for key, value in outage["pongs"].items() if key[1] == "default"},
             {name: round(value, 1) for name, value in bound.items()},
             {name: round(value, 1) for name, value in outage["baseline"].items()}))
    for name, celery in hosts.items():
        delay = outage["pongs"][(name, "default")]
        assert delay is not None, "%s: the default worker never answered after the outage" % name
        assert delay <= bound[name], "%s: the default worker answered %.1fs after the broker's return, bound %.1fs" % (name, delay, bound[name])
        pid = outage["before"][(name, "default")]
        assert outage["during"][(name, "default")] == pid and outage["after"][(name, "default")] == pid, (
            "%s: the default worker restarted: %s" % (name, [outage[k][(name, "default")] for k in ("before", "during", "after")]))
        assert celery.manager_state("default") in RUNNING_WITHOUT_RESTART, (name, celery.manager_state("default"))
        in_flight = outage["in_flight"][name]
        held = results(celery, in_flight, 180)
        queued = results(celery, outage["queued"][name] + [outage["after_return"][name]], 120)
        assert all(state == "SUCCESS" for state, _value in list(held.values()) + list(queued.values())), (name, held, queued)

        def executed_records(celery=celery):
            seqs = stream(celery, outage["key"])
            return len(seqs) >= 5 and seqs
        wait(executed_records, 60, "the record tasks on %s" % name)
        # A moment more, so that a second run of any task would show.
        time.sleep(3)
        log = log_after(celery, "default", outage["default_marks"][name])
        # The queued tasks, the one published during the outage and the one
        # after it each completed once, and none is left unacknowledged in
        # the broker, where it would be delivered again after the visibility
        # timeout.
        once = outage["queued"][name] + [outage["after_return"][name]]
        for task_id in once:
            assert succeeded(log, task_id) == 1, "%s: task %s completed %d times:\n%s" % (name, task_id, succeeded(log, task_id), log[-4000:])
        executed = stream(celery, outage["key"])
        assert sorted(executed) == [0, 1, 2, 100, 200], (
            "%s: record tasks executed %s (each of 0, 1, 2 (queued before), 100 (during) and 200 (after) once expected)" % (name, executed))
        pending = set(unacked_ids(celery))
        assert not pending & set(once), "%s: tasks left unacknowledged in the broker (they would run again): %s" % (name, sorted(pending & set(once)))
        # The tasks in flight ended inside the outage and their results
        # reached the backend once it was back (result_backend_always_retry;
        # without it they end FAILURE with a ConnectionError although their
        # work was done).
        # A task delivered again after the reconnect (at-least-once, below)
        # stores the result of its later run: its first run must have
        # completed too.
        for task_id, (state, value) in held.items():
            if value["attempt"] > 1:
                assert value["finished"] > outage["restarted_at"] and succeeded(log, task_id) >= 2, (
                    "%s: task %s ran again after the outage, but its first run did not complete: %s" % (name, task_id, value))
                continue
            assert value["released"] and outage["stopped_at"] < value["finished"] < outage["restarted_at"], (
                "%s: task %s did not end inside the outage (%.1f..%.1f): %s" % (name, task_id, outage["stopped_at"], outage["restarted_at"], value))
        # acks_late is at-least-once: a task in flight when the connection
        # dropped cannot be acknowledged on it, and Celery may deliver it
        # again after the reconnect (then it runs twice) or after the
        # visibility timeout. It completed; how often is printed.
        runs = {task_id: succeeded(log, task_id) for task_id in in_flight}
        assert all(count >= 1 for count in runs.values()), "%s: a task in flight never completed: %s" % (name, runs)
        assert outage["samples"][name]["publisher"], "%s: the publisher was not waiting during the outage" % name
        published = celery.sh("cat /tmp/faults-publisher.log").stdout
        assert "published after" in published and int(published.split()[2]) >= 1, published
        print("%s: the tasks in flight ended inside the outage and their results were stored after it; they completed %s "
              "times, %d left unacknowledged; the queued tasks and those published during and after ran once; the publisher "
              "failed %s times before the broker took its task"
              % (name, sorted(runs.values()), len(pending & set(in_flight)), published.split()[2]))


def test_a_worker_started_while_the_broker_is_down_keeps_trying_and_comes_up_with_it(hosts, outage):
    print("mem workers started with the broker down (for %.0fs) answered ping within %s s of its return"
          % (outage["mem_down"], {"%s/%s" % key: value for key, value in outage["pongs"].items() if key[1] == "mem"}))
    for name, celery in hosts.items():
        pid = outage["started"][name]
        assert pid and pid != outage["before"][(name, "mem")], "%s: mem was not started anew" % name
        sample = outage["samples"][name]
        assert sample["pid"] == pid and sample["state"] in RUNNING_WITHOUT_RESTART, "%s: 15 s after its start with no broker: %s" % (name, sample)
        assert outage["during"][(name, "mem")] == pid, "%s: mem exited while the broker was down" % name
        log = log_after(celery, "mem", outage["marks"][name])
        assert "Cannot connect to redis://" in log and "Trying again in" in log, "%s: no retry in the log:\n%s" % (name, log[-2000:])
        assert outage["pongs"][(name, "mem")] is not None, "%s: mem never answered after the outage" % name
        assert outage["after"][(name, "mem")] == pid, "%s: mem was restarted instead of connecting" % name
        result = celery.probe("call", "whoami", "--queue", "mem", "--timeout", "30")
        assert result["state"] == "SUCCESS" and result["result"]["pid"] in celery.children(pid), result


def reboot(names):
    """A clean reboot of the containers: SIGRTMIN+3 asks systemd, PID 1, for a
    shutdown as `reboot` does; the containers then start again. Returns when
    each has booted: (time of the start, seconds each took to boot)."""
    docker("kill", "--signal", "SIGRTMIN+3", *names)
    docker("wait", *names, timeout=300)
    booted = time.monotonic()
    docker("start", *names)

    def boot(name):
        docker("exec", name, "timeout", "300", "systemctl", "is-system-running", "--wait", timeout=320, check=False)
        return time.monotonic() - booted
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        return booted, dict(zip(names, pool.map(boot, names)))


def beat_ticks_again(celery, booted):
    """Seconds from the containers' start until a Beat tick ran on celery's
    host (printed, not bounded: polled every 0.5 s and less often later)."""
    wait(celery.beat_pids, 300, "Beat to run on %s after the reboot" % celery.hostname)
    celery.probe("clear-ticks")
    wait(lambda: celery.probe("ticks"), 300, "a Beat tick after the reboot on %s" % celery.hostname)
    return time.monotonic() - booted


def all_answer_seconds(hosts, started, timeout=300):
    """Per host, seconds from `started` until all its workers answer one ping
    (None if they never do), the hosts side by side (printed, not bounded:
    polled every 0.5 s and less often later)."""
    def host_seconds(item):
        name, celery = item
        nodes = [celery.node(worker) for worker in celery.workers]
        try:
            wait(lambda: pong(celery, *nodes), timeout, "the workers of %s to answer ping" % name)
        except AssertionError:
            return name, None
        return name, round(time.monotonic() - started, 1)
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        return dict(pool.map(host_seconds, hosts.items()))


def started_after_boot(celery, pid):
    """Seconds between the start of the container's PID 1 and the start of
    `pid`, read from the kernel's process start times (no clock of the
    controller, no load on the way in between)."""
    ages = celery.sh("ps -o etimes= -p 1 && ps -o etimes= -p %d" % pid).stdout.split()
    return int(ages[0]) - int(ages[1])


# How long after the boot's end a process manager may take to spawn its
# programs: supervisord starts them when its own unit has started, which may
# be just after systemd calls the boot done.
SPAWN_SLACK = 10


def test_after_a_reboot_every_worker_and_beat_are_back_by_themselves(hosts):
    names = sorted(hosts)
    for celery in hosts.values():
        # /run is a tmpfs: a marker in the run directory must be gone after the
        # reboot, the directory itself back (tmpfiles.d).
        celery.sh("touch /run/%s/faults-marker" % celery.app)
    booted, boot = reboot(names)
    delays = all_answer_seconds(hosts, booted)
    print("after the reboot each host's workers all answered ping %s s after its container started (boot %s s)"
          % (delays, {k: round(v, 1) for k, v in boot.items()}))
    for name, delay in sorted(delays.items()):
        assert delay is not None, "%s: its workers did not all answer ping after the reboot" % name
    # Back by themselves means started by the boot: each main process began
    # while the host booted (its start time against PID 1's, both the
    # kernel's; PIDs repeat in a fresh container, the start time tells), not
    # at a retry after a failed start nor by anything later. How long the
    # start-up then takes depends on the machine's load: the time to answer is
    # printed above, not bounded.
    for (name, worker), pid in main_pids(hosts).items():
        assert pid, (name, worker)
        offset = started_after_boot(hosts[name], pid)
        assert 0 <= offset <= boot[name] + SPAWN_SLACK, (
            "%s: %s started %ds after its container did, not by the boot (%.1fs)" % (name, worker, offset, boot[name]))
    for name, celery in hosts.items():
        run_dir = celery.host.file("/run/" + celery.app)
        assert run_dir.is_directory and run_dir.user == celery.user and run_dir.mode == 0o750, name
        assert not celery.host.file("/run/%s/faults-marker" % celery.app).exists, "%s: /run survived the reboot" % name
        for worker in celery.workers:
            result = celery.probe("call", "whoami", "--queue", "mem" if worker == "mem" else "celery", "--timeout", "30")
            assert result["state"] == "SUCCESS" and result["result"]["pid"] in celery.children(celery.main_pid(worker)), (name, worker, result)
            assert celery.manager_state(worker) in RUNNING_WITHOUT_RESTART
    assert not hosts[SUPERVISOR].beat_pids()
    print("Beat (systemd) ticking %.1fs after the containers started" % beat_ticks_again(hosts[BEAT_HOST], booted))


def run_site_on_each_host(extra_vars=None):
    """The site playbook once per host (--limit), all at once. In one play
    the linear strategy would run the supervisor and the systemd role one
    after the other, and one host's warm drain would hold up the other's."""
    def one(name):
        cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "celeryops.celery.site", "--limit", name,
               "-e", json.dumps(extra_vars or {})]
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = dict(zip((SYSTEMD, SUPERVISOR), pool.map(one, (SYSTEMD, SUPERVISOR))))
    for name, result in runs.items():
        assert result.returncode == 0, "%s:\n%s" % (name, (result.stdout + result.stderr)[-5000:])


@contextlib.contextmanager
def feed(celery, queue, seconds, stop_file):
    """Keeps `queue` supplied with sleep(seconds) tasks, one published every
    seconds/2 (twice what one process consumes), from a publisher on the host,
    until the block ends: whenever the worker looks for its next task, one is
    there, for as long as the block takes."""
    code = ("import os, time\n"
            "from celery_testapp.app import app\n"
            "while not os.path.exists(%r):\n"
            "    app.send_task('celery_testapp.app.sleep', args=[%r], queue=%r)\n"
            "    time.sleep(%r)\n" % (stop_file, seconds, queue, seconds / 2.0))
    celery.sh("rm -f %s" % stop_file)
    celery.sh(celery.in_app("nohup timeout 1800 .venv/bin/python -c %s >/tmp/faults-feeder.log 2>&1 &" % shlex.quote(code)))
    try:
        yield
    finally:
        celery.sh("touch %s" % stop_file)
        wait(lambda: celery.sh("pgrep -f 'faults[-]feeder-stop'", check=False).rc != 0, 30, "the feeder to stop")


def drained_task(log):
    """The sleep task that was running when the warm shutdown began: received
    before it, succeeded after it. Ids in the order the log shows them."""
    shutdown = log.find("Warm shutdown")
    received = re.findall(r"sleep\[([0-9a-f-]{36})\] received", log)
    return shutdown, [i for i in received if 0 <= log.find("sleep[%s] received" % i) < shutdown < log.find("sleep[%s] succeeded" % i)]


def test_a_removed_worker_drains_warm_and_a_renamed_one_leaves_no_process(hosts):
    # default becomes main (a rename) and mem goes (a removal). mem works
    # through a stream of sleep tasks that lasts until the play is over, so
    # that whenever the stop comes one task is running.
    marks = {}
    try:
        with contextlib.ExitStack() as feeders:
            for name, celery in hosts.items():
                marks[name] = log_mark(celery, "mem")
                feeders.enter_context(feed(celery, "mem", DRAIN_STEP, "/tmp/faults-feeder-stop"))
                wait(lambda: any(t["name"].endswith(".sleep") for t in celery.active(celery.node("mem"))), 60,
                     "a sleep task running on mem@%s" % name)
            started = time.monotonic()
            run_site_on_each_host({"celery_workers": [{"name": "main"}]})
            print("site playbook with default renamed and mem removed: %.0fs" % (time.monotonic() - started))
        for name, celery in hosts.items():
            log = log_after(celery, "mem", marks[name])
            shutdown, drained = drained_task(log)
            assert shutdown >= 0, "%s: mem was not stopped warm:\n%s" % (name, log[-3000:])
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
            wait(lambda: pong(celery, celery.node("main")), 60, "main@%s to answer" % name)
            assert celery.probe("call", "whoami", "--timeout", "30")["state"] == "SUCCESS"
            print("%s: task %s ran through the warm shutdown of the removed worker" % (name, drained[0]))
    except BaseException:
        # The inventory's workers back for the checks after this one.
        purge_mem(hosts)
        run_site_on_each_host()
        raise
    # The sleep tasks nobody started: not for the mem worker the next check's
    # site run (Beat's move) brings back with the inventory's workers.
    purge_mem(hosts)


def purge_mem(hosts):
    for celery in hosts.values():
        celery.sh(celery.in_app("timeout 60 .venv/bin/celery -A celery_testapp purge -f -Q mem"), check=False)


def test_after_a_reboot_beat_under_supervisor_is_back_by_itself(hosts):
    # Beat moves to the supervisor host (one play over both hosts: Beat is
    # stopped on the systemd host before it starts there), then that host
    # reboots.
    # The same run brings back the inventory's workers after the check above
    # renamed one and removed the other.
    result = run_site({"celery_beat_host": SUPERVISOR})
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert hosts[SUPERVISOR].beat_pids() and not hosts[SYSTEMD].beat_pids()
    wait_for_pongs(hosts, 120)
    for name, celery in hosts.items():
        assert worker_processes(celery, "main") == [], "%s: main still runs after the inventory's workers came back" % name
    booted, boot = reboot([SUPERVISOR])
    print("Beat (supervisor) ticking %.1fs after the container started (boot %.1fs)"
          % (beat_ticks_again(hosts[SUPERVISOR], booted), boot[SUPERVISOR]))
    assert not hosts[SYSTEMD].beat_pids()
