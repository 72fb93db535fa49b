"""A user's own task notifies the documented handler topic
`celeryops.celery restart workers` (e.g. after it changed a config file of the
app): every worker of the app restarts warm, and a task in flight at that
moment runs to its end once (SUCCESS, no WorkerLostError).

The play is what a user writes: the worker role, then their own task that
notifies the topic. The task in flight runs until the test releases it, which
it does only once the restart is under way and waiting for it: however long
the play takes to reach its handlers, the task is in flight through the warm
shutdown.

The topic and its handler are the process manager's: the check runs on the
first host of each manager in a scenario (one_host_per_manager)."""
import os
import tempfile
import time
import uuid

import pytest
from celery_checks import assert_held_task_ran_once, run_site, wait, while_held

testinfra_hosts = ["ansible://celery_workers"]

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


@pytest.mark.one_host_per_manager
def test_the_restart_topic_restarts_the_workers_warm_while_a_task_runs(celery):
    worker = celery.workers[0]
    node = celery.node(worker)
    wait(lambda: celery.ping(node), 120, "ping of %s" % node)
    old_pid = celery.main_pid(worker)
    pool_pids = celery.children(old_pid)
    since = int(celery.sh("date +%s").stdout)
    shutdowns = celery.log_since(worker, since).count("Warm shutdown")
    release = "/var/lib/%s/topic-release-%s" % (celery.app, uuid.uuid4().hex)
    task_id = celery.probe("send", "hold", release)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as play:
        play.write(PLAY)
    try:
        # From the worker's own log (cheaper than `celery inspect` on a loaded machine).
        wait(lambda: "hold[%s] received" % task_id in celery.log_since(worker, since), 300,
             "the task to reach %s" % node, interval=2)
        started = time.monotonic()
        result = while_held(
            lambda: run_site({"topic_check_stamp": time.time()}, playbook=play.name, limit=celery.host.backend.host),
            lambda: celery.log_since(worker, since).count("Warm shutdown") > shutdowns,
            lambda: celery.release(release), "the play's warm shutdown of %s" % node)
        output = result.stdout + result.stderr
        print("the user's play on %s: %.0fs" % (celery.hostname, time.monotonic() - started))
        assert result.returncode == 0, output[-4000:]
        assert HANDLER[celery.manager] in output, "the topic's handler did not run:\n%s" % output[-4000:]
        assert celery.main_pid(worker) not in (0, old_pid), "the worker was not restarted"
        # It ran to its end once, in the pool process it started in.
        assert_held_task_ran_once(celery.probe("wait", task_id, "--timeout", "120"), pool_pids)
        assert "WorkerLostError" not in celery.log_since(worker, since)
        wait(lambda: celery.ping(node), 120, "ping of %s after the restart" % node)
    finally:
        os.unlink(play.name)
        celery.sh("rm -f %s /etc/%s-topic-check.conf" % (release, celery.app), check=False)
