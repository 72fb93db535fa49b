"""The watchdog (celery_watchdog_enabled, molecule.yml, its default timing)
never restarts a worker that is only busy: on both hosts (systemd and
supervisor), every slot of the busy-* workers runs a ten-minute task while
test_pools.py's checks run beside them (this check runs in an xdist worker of
its own, see celery_fixtures.py). prefork, threads and gevent answer ping all
that time; solo cannot answer inside a task, nor gevent inside a task that
never yields to its loop (a C call), so the watchdog hears nothing from them
for ten minutes, says that it leaves them alone, and does. Each task
ends once, on the process that started it."""
import json
import time

from celery_checks import TIMED_INTERVAL, in_parallel, tasks_attempts, wait

LONG = 600
# Every slot of each busy worker (molecule.yml's concurrency).
SLOTS = {"busy-prefork": 1, "busy-threads": 2, "busy-gevent": 4, "busy-solo": 1, "busy-gevent-blocked": 1}
ANSWER_WHILE_BUSY = ("busy-prefork", "busy-threads", "busy-gevent")
# The pools that cannot answer inside these tasks: the watchdog must say why
# it leaves them alone.
SILENT_WHILE_BUSY = {"busy-solo": "solo", "busy-gevent-blocked": "gevent"}
# The task each busy worker runs: a sleep, or for the blocked gevent worker a
# sleep that never yields to gevent's loop.
TASKS = {"busy-gevent-blocked": "long_blocking_acked_at_start"}
# Ping samples while the tasks run, in seconds after the first was sent (no
# task starts earlier, so every sample comes before any task can end).
SAMPLES_AT = (150, 300, 450)


def answering(celery, workers):
    """The workers among `workers` that answer one broadcast ping."""
    nodes = {celery.node(worker): worker for worker in workers}
    cmd = celery.sh(celery.in_app(".venv/bin/celery -A celery_testapp inspect ping -d %s --timeout 5 --json"
                                  % ",".join(nodes)), check=False)
    lines = [line for line in cmd.stdout.splitlines() if line.startswith("{")]
    replies = json.loads(lines[-1]) if lines else {}
    return sorted(nodes[node] for node in replies if node in nodes)


def result_of(celery, task_id, timeout):
    """The task's result, or why there is none (a task of a worker killed
    while it ran is lost: acknowledged at its start)."""
    try:
        return celery.probe("wait", task_id, "--timeout", max(timeout, 5))
    except AssertionError as exc:
        return {"id": task_id, "state": "no result", "error": str(exc)[-300:]}


def test_workers_busy_with_ten_minute_tasks_are_never_restarted(hosts):
    def busy(celery):
        mark = celery.watchdog_mark()
        wait(lambda: answering(celery, SLOTS) == sorted(SLOTS), 120, "the busy workers of %s to answer" % celery.hostname,
             TIMED_INTERVAL)
        before = {worker: celery.main_pid(worker) for worker in SLOTS}
        sent = time.monotonic()
        tasks = {worker: [celery.probe("send", TASKS.get(worker, "long_acked_at_start"), LONG, "--queue", worker)
                          for _slot in range(slots)]
                 for worker, slots in SLOTS.items()}
        every_id = [task_id for ids in tasks.values() for task_id in ids]
        wait(lambda: tasks_attempts(celery, every_id) == [1] * len(every_id), 120,
             "every slot of the busy workers of %s to start its task" % celery.hostname, TIMED_INTERVAL)
        samples = []
        for moment in SAMPLES_AT:
            time.sleep(max(0.0, sent + moment - time.monotonic()))
            samples.append(answering(celery, SLOTS))
        results = {worker: [result_of(celery, task_id, LONG + 300 - (time.monotonic() - sent)) for task_id in ids]
                   for worker, ids in tasks.items()}
        return {"before": before, "after": {worker: celery.main_pid(worker) for worker in SLOTS},
                "samples": samples, "results": results, "log": celery.watchdog_log(mark)}

    seen = in_parallel(busy, hosts)
    for name, celery in hosts.items():
        s = seen[name]
        print("%s: answering ping while busy, per sample: %s; watchdog: %s"
              % (name, s["samples"], " | ".join(s["log"].strip().splitlines()[-4:])))
        # What it did: nothing, whatever else this scenario's checks did.
        assert s["after"] == s["before"], (name, s["before"], s["after"])
        assert "restarting" not in s["log"] and "killing" not in s["log"], (name, s["log"][-3000:])
        # What the watchdog sees: answers from prefork, threads and gevent
        # all along; nothing from solo and the blocked gevent worker.
        assert len(s["samples"]) == len(SAMPLES_AT), (name, s["samples"])
        for sample in s["samples"]:
            assert sample == sorted(ANSWER_WHILE_BUSY), (name, s["samples"])
        # And it said why it left solo and the blocked gevent worker alone.
        for worker, pool in SILENT_WHILE_BUSY.items():
            spared = "worker %s (%s, pid %d, state S) has not answered ping" % (worker, celery.node(worker), s["before"][worker])
            assert spared in s["log"], (name, worker, s["log"][-3000:])
            assert "its pool (%s) cannot answer while a task runs" % pool in s["log"], (name, worker, s["log"][-3000:])
        for worker in ANSWER_WHILE_BUSY:
            assert "worker %s (" % worker not in s["log"], (name, worker, s["log"][-3000:])
        # The premise: ten minutes of work on every slot, each task once.
        for worker, results in s["results"].items():
            for result in results:
                assert result["state"] == "SUCCESS" and result["result"]["attempt"] == 1, (name, worker, result)
                assert result["result"]["slept"] >= LONG - 1, (name, worker, result)
