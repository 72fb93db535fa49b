"""A user's own task notifies the documented handler topic
`celeryops.celery restart workers` (e.g. after it changed a config file of the
app): every worker of the app restarts warm, and a task in flight at that
moment finishes (SUCCESS, slept its full time, no WorkerLostError).

The play is what a user writes: the worker role, then their own task that
notifies the topic. The default worker works through a queue of short sleep
tasks, longer in all than the play takes to reach its handlers, so that one is
running whenever the restart comes."""
import json
import os
import shlex
import tempfile
import time

from celery_checks import run_site, wait

testinfra_hosts = ["ansible://celery_workers"]

# 200 tasks of 4 s on a concurrency-2 worker: about 7 minutes of work, more
# than the play takes on a loaded machine; the rest is purged afterwards.
STEP, COUNT = 4, 200
PLAY = """\
- name: A user's play with the collection's roles and a config file of the app
  hosts: celery_workers
  become: true
  roles:
    - role: celeryops.celery.worker
  tasks:
    - name: Change a config file of the app
      ansible.builtin.copy:
        dest: /etc/{{ celery_app_name }}-topic-check.conf
        content: "changed at {{ topic_check_stamp }}\\n"
        owner: root
        group: root
        mode: "0644"
      notify: celeryops.celery restart workers
"""
HANDLER = {
    "systemd": "RUNNING HANDLER [celeryops.celery.systemd : Restart every Celery worker of the app warm (celeryops.celery systemd)]",
    "supervisor": "RUNNING HANDLER [celeryops.celery.supervisor : Restart every Celery worker of the app warm (celeryops.celery supervisor)]",
}


def py(celery, code, timeout=90):
    out = celery.sh(celery.in_app("timeout %d .venv/bin/python -c %s" % (timeout, shlex.quote(code)))).stdout
    return json.loads(out.strip().splitlines()[-1])


def send_many(celery, count, task, *args):
    code = ("import json; from celery_testapp.app import app; "
            "print(json.dumps([app.send_task('celery_testapp.app.%s', args=%r).id for _ in range(%d)]))"
            % (task, list(args), count))
    return py(celery, code)


def result_of(celery, task_id, timeout=60):
    code = ("import json; from celery_testapp.app import app; r = app.AsyncResult(%r); "
            "v = r.get(timeout=%d, propagate=False); "
            "print(json.dumps([r.state, v if r.state == 'SUCCESS' else repr(v)]))" % (task_id, timeout))
    return py(celery, code, timeout=timeout + 30)


def log_mark(celery, worker):
    path = "/var/log/%s/worker-%s.log" % (celery.app, worker)
    size = celery.sh("stat -c %%s %s 2>/dev/null || echo 0" % path).stdout.strip()
    return int(celery.sh("date +%s").stdout), int(size)


def log_after(celery, worker, mark):
    since, size = mark
    if celery.manager == "systemd":
        return celery.sh("journalctl -q -o cat -u %s --since=@%d" % (celery.service(worker), since)).stdout
    return celery.sh("tail -c +%d /var/log/%s/worker-%s.log" % (size + 1, celery.app, worker), check=False).stdout


def test_the_restart_topic_restarts_the_workers_warm_while_a_task_runs(celery):
    worker = celery.workers[0]
    node = celery.node(worker)
    wait(lambda: celery.ping(node), 60, "ping of %s" % node)
    old_pid = celery.main_pid(worker)
    mark = log_mark(celery, worker)
    tasks = send_many(celery, COUNT, "sleep", STEP)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as play:
        play.write(PLAY)
    try:
        # From the worker's own log (cheaper than `celery inspect` on a loaded machine).
        wait(lambda: "sleep[%s] received" % tasks[0] in log_after(celery, worker, mark), 120,
             "the first task to reach %s" % node, interval=2)
        started = time.monotonic()
        result = run_site({"topic_check_stamp": time.time()}, playbook=play.name, limit=celery.host.backend.host)
        output = result.stdout + result.stderr
        print("the user's play on %s: %.0fs" % (celery.hostname, time.monotonic() - started))
        assert result.returncode == 0, output[-4000:]
        assert HANDLER[celery.manager] in output, "the topic's handler did not run:\n%s" % output[-4000:]
        assert celery.main_pid(worker) not in (0, old_pid), "the worker was not restarted"
        log = log_after(celery, worker, mark)
        shutdown = log.find("Warm shutdown")
        assert shutdown >= 0, "the worker was not stopped warm:\n%s" % log[-3000:]
        # A task in flight when the warm shutdown began: received before it,
        # finished after it.
        drained = [i for i in tasks if 0 <= log.find("sleep[%s] received" % i) < shutdown < log.find("sleep[%s] succeeded" % i)]
        assert drained, "no task was in flight at the restart:\n%s" % log[-3000:]
        state, value = result_of(celery, drained[0])
        assert state == "SUCCESS" and value["slept"] >= STEP, (state, value)
        assert "WorkerLostError" not in log, log[-3000:]
        wait(lambda: celery.ping(node), 60, "ping of %s after the restart" % node)
    finally:
        os.unlink(play.name)
        # The sleep tasks nobody started: not for the checks that follow.
        celery.sh(celery.in_app("timeout 30 .venv/bin/celery -A celery_testapp purge -f"), check=False)
        celery.sh("rm -f /etc/%s-topic-check.conf" % celery.app, check=False)
