"""A RabbitMQ outage, as molecule/faults shows one on Redis: the host's broker
stopped for 30 s while the default worker runs a task in each of its pool
processes and three more wait in the queue. Both workers wait it out without
a restart and answer again, and every task queued before or published after
it runs once. The status playbook, run in the outage, names the broker as
the problem and calls no worker down.

The last check of each host (each host's checks run in file order, and this
file comes last): it stops the host's own broker (molecule.yml), which no
other host uses, the way its service manager would (stop_broker). Nothing is sized to the machine's speed: the held tasks run
until the check releases them, which it does once the worker has logged the
connection's loss, and the broker comes back OUTAGE s after its stop and at
least 10 s after that release; so they are in flight when the connection
drops and end inside the outage, where they cannot be acknowledged. They
hold every pool process and, unacknowledged (acks_late, prefetch 1), the
worker's whole prefetch window, so the queued tasks wait in the broker."""
import subprocess
import time
import uuid

from celery_checks import RUNNING_WITHOUT_RESTART, TIMED_INTERVAL, answer_after_outage_bound, docker, run_status, task_attempts, wait

testinfra_hosts = ["ansible://celery_workers"]

OUTAGE = 30
# How Celery's consumer logs the loss of its broker connection.
DROPPED = "Connection to broker lost"


def broker_started(broker):
    """Whether the node has started (await_startup fails at once while the
    node is still being launched, so it is asked again)."""
    proc = subprocess.run(["docker", "exec", broker, "rabbitmqctl", "await_startup", "--timeout", "60"],
                          capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode == 0


def stop_broker(broker):
    """Stop the node as `systemctl stop rabbitmq-server` does: the node
    closes every client connection (CONNECTION_FORCED), so the worker sees
    the loss at once. Not `docker stop`: the container's first process is
    a shell that ignores SIGTERM, so docker kills the node after 10 s, and
    then a worker may learn of the loss only from missed heartbeats (up to
    4 minutes with Celery's and RabbitMQ's defaults): once a worker had not
    logged it 300 s after such a stop."""
    docker("exec", broker, "rabbitmqctl", "stop", timeout=300)
    docker("wait", broker, timeout=300)


def queue_depths(broker, vhost, queues):
    """Messages ready or unacknowledged in each of the queues, as RabbitMQ
    counts them: a message left unacknowledged would be delivered again."""
    out = docker("exec", broker, "rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                 "name", "messages_ready", "messages_unacknowledged", timeout=300)
    depths = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] in queues:
            depths[fields[0]] = (int(fields[1]), int(fields[2]))
    return depths


def test_the_workers_wait_out_a_broker_outage_without_a_restart_and_every_queued_task_runs_once(host, celery, tmp_path):
    variables = host.ansible.get_variables()
    broker = variables["celery_test_broker"]
    vhost = host.backend.get_hostname()
    key = "rabbitmq:outage:%s" % uuid.uuid4().hex
    release = "/var/lib/%s/outage-%s" % (celery.app, uuid.uuid4().hex)
    baseline = celery.ping_seconds("default")
    before = {worker: celery.main_pid(worker) for worker in celery.workers}
    since, offset = int(celery.sh("date +%s").stdout), celery.log_size("default")
    pool = celery.children(before["default"])
    held = [celery.probe("send", "hold", release) for _process in pool]
    wait(lambda: {task["id"] for task in celery.active(celery.node("default"))} >= set(held), 120,
         "a held task in each of the %d pool processes of %s" % (len(pool), celery.node("default")))
    queued = [celery.probe("send", "record", seq, key) for seq in range(3)]
    try:
        stop_broker(broker)
        stopped_at, stopped = time.time(), time.monotonic()
        wait(lambda: DROPPED in celery.log_since("default", since, offset), 300,
             "%s to log the connection's loss" % celery.node("default"))
        lost_seen = time.monotonic() - stopped
        celery.release(release)
        released = time.monotonic()
        status, status_report = run_status(vhost, tmp_path)
        time.sleep(max(0, OUTAGE - (time.monotonic() - stopped), 10 - (time.monotonic() - released)))
        during = {worker: celery.main_pid(worker) for worker in celery.workers}
        down = time.monotonic() - stopped
        restarted_at = time.time()
    finally:
        docker("start", broker, timeout=300)
    wait(lambda: broker_started(broker), 300, "%s to start again" % broker, interval=2)
    back = time.monotonic()
    answered = {}
    for worker in celery.workers:
        wait(lambda worker=worker: celery.ping(celery.node(worker)), 300, "%s to answer after the outage" % celery.node(worker),
             TIMED_INTERVAL)
        answered[worker] = round(time.monotonic() - back, 1)
    bound = answer_after_outage_bound(baseline)
    after_return = [celery.probe("send", "record", 200, key),
                    celery.probe("send", "record", 201, key, "--queue", celery.queues["io"][0])]

    def executed():
        seqs = [record["seq"] for record in celery.probe("records", "--key", key)]
        return len(seqs) >= 5 and seqs
    wait(executed, 120, "the record tasks to run")
    results = {task_id: celery.probe("wait", task_id, "--timeout", 180) for task_id in held + queued + after_return}
    # Until every message of the app's queues is acknowledged: one left
    # unacknowledged would run again at the next reconnect.
    queues = sorted({queue for names in celery.queues.values() for queue in names})

    def acknowledged():
        found = queue_depths(broker, vhost, queues)
        return all(found.get(queue) == (0, 0) for queue in queues) and found
    depths = wait(acknowledged, 120, "the app's queues %s to be empty and acknowledged" % queues)
    time.sleep(3)
    executed_seqs = [record["seq"] for record in celery.probe("records", "--key", key)]
    attempts = {task_id: task_attempts(celery, task_id) for task_id in held}
    log = celery.log_since("default", since, offset)
    print("%s: broker down %.0f s (the worker logged the loss after %.0f s); answered %s s after its return (bound %.0f s);"
          " the %d tasks in flight ran %s times, the record tasks %s; queues after: %s"
          % (celery.hostname, down, lost_seen, answered, bound, len(held), sorted(attempts.values()), sorted(executed_seqs), depths))

    for worker in celery.workers:
        assert answered[worker] <= bound, "%s answered %.1f s after the broker's return, bound %.1f s" % (
            celery.node(worker), answered[worker], bound)
        assert during[worker] == before[worker] == celery.main_pid(worker), "%s restarted: %s -> %s -> %s" % (
            celery.node(worker), before[worker], during[worker], celery.main_pid(worker))
        assert celery.manager_state(worker) in RUNNING_WITHOUT_RESTART, (worker, celery.manager_state(worker))
    assert all(result["state"] == "SUCCESS" for result in results.values()), results
    # Queued before the outage (0, 1, 2) and published after it on both
    # workers' queues (200, 201): each ran once.
    assert sorted(executed_seqs) == [0, 1, 2, 200, 201], executed_seqs
    # The tasks in flight ran to their end inside the outage: released after
    # the drop, finished before the broker's return (the stored result is
    # that run's: Celery keeps a SUCCESS it already stored). acks_late is
    # at-least-once: their acknowledgement was lost with the connection, so
    # RabbitMQ may deliver them again after the reconnect, and then they run
    # a second time (seen every time here), never a third.
    for task_id in held:
        assert attempts[task_id] in (1, 2), (task_id, attempts[task_id])
        assert log.count("hold[%s] succeeded" % task_id) == attempts[task_id], (task_id, attempts[task_id], log[-3000:])
        done = results[task_id]["result"]
        assert done["attempt"] == 1 and done["released"] and stopped_at < done["finished"] < restarted_at, (task_id, done)
    # The broker's password stays out of what the workers logged through it.
    assert variables["celery_test_broker_password"] not in log
    # The status in the outage: it fails, saying the broker could not be
    # asked, and calls no worker down or silent (their processes ran on).
    output = status.stdout + status.stderr
    assert status.returncode != 0, output[-4000:]
    assert "%s: the broker amqp://" % vhost in output and "could not be asked about the workers" in output, output[-4000:]
    assert "is not running" not in output and "does not answer ping" not in output, output[-4000:]
    assert [(w["state"], w["answers_ping"]) for w in status_report["workers"]] == [("running", None)] * len(celery.workers), (
        status_report)
    assert variables["celery_test_broker_password"] not in output
    celery.sh("rm -f %s" % release)
