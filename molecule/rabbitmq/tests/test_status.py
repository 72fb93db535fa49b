"""The status playbook (celeryops.celery.status) on each host, as a person
after a deploy or a cron job runs it: with every worker up it shows each one
running, answering, the queues the broker says it consumes and the task it
runs, changes nothing and passes; with one worker stopped it fails and names
that worker. (With the broker down: test_broker_outage.py.)"""
from celery_checks import failed_tasks, json_report, recap, run_site, run_status, wait

testinfra_hosts = ["ansible://celery_workers"]


def test_the_status_shows_every_worker_its_queues_and_the_task_it_runs_and_changes_nothing(host, celery, tmp_path):
    name = host.backend.get_hostname()
    task_id, _pool, release = celery.hold("default")
    try:
        # In check mode, as a careful person tries it first: the same report.
        result, report = run_status(name, tmp_path, check=True)
    finally:
        celery.release(release)
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result.stdout)[name]["changed"] == 0, result.stdout[-2000:]
    assert report["broker"]["reachable"] and report["problems"] == [], report
    workers = {worker["name"]: worker for worker in report["workers"]}
    assert sorted(workers) == sorted(celery.workers), report
    for worker, seen in workers.items():
        assert seen["state"] == "running" and seen["pid"] == celery.main_pid(worker) and seen["answers_ping"], seen
        assert seen["node"] == celery.node(worker) and seen["uptime_seconds"] >= 0, seen
        assert sorted(seen["queues"]) == sorted(celery.queues[worker]), (worker, seen["queues"], celery.queues[worker])
    assert task_id in [task["id"] for task in workers["default"]["active"]], workers["default"]
    # The table a person reads: a line per worker with its node and state.
    for worker in celery.workers:
        assert any(celery.node(worker) in line and "running" in line for line in result.stdout.splitlines()), result.stdout
    assert "s3cr3t-value-must-not-leak" not in result.stdout + result.stderr + str(report)
    celery.probe("wait", task_id, "--timeout", 120)


def test_the_status_fails_naming_a_stopped_worker(host, celery, tmp_path):
    name = host.backend.get_hostname()
    celery.control("stop", "io")
    try:
        result, report = run_status(name, tmp_path)
    finally:
        celery.control("start", "io")
        wait(lambda: celery.ping(celery.node("io")), 120, "%s to answer again" % celery.node("io"))
    assert result.returncode != 0, result.stdout[-4000:]
    expected = "%s: worker io (%s) is not running: %s says" % (name, celery.node("io"), celery.manager)
    output = result.stdout + result.stderr
    assert expected in output, output[-4000:]
    workers = {worker["name"]: worker for worker in report["workers"]}
    assert workers["io"]["state"] != "running" and workers["io"]["answers_ping"] is False, workers["io"]
    assert workers["default"]["state"] == "running" and workers["default"]["answers_ping"], workers["default"]
    assert report["problems"] == [expected.split(": ", 1)[1] + " " + workers["io"]["state"]], report["problems"]


def test_bad_status_settings_are_refused_naming_them(host, tmp_path):
    name = host.backend.get_hostname()
    for variables, words in (({"celery_status_timeout": 0}, ["celery_status_timeout must be a number of seconds above 0",
                                                             "got '0"]),
                             ({"celery_status_json": "status.json"}, ["celery_status_json empty or an absolute path",
                                                                      "got 'status.json'"])):
        result = run_site(dict(variables), playbook="celeryops.celery.status", limit=name, callback="ansible.builtin.json")
        assert result.returncode != 0, result.stdout[-3000:]
        report = json_report(result)
        messages = [message for _task, _host, message in failed_tasks(report)]
        assert any(all(word in message for word in words) for message in messages), (variables, messages)
        assert all(stats.get("changed", 0) == 0 for stats in report["stats"].values()), report["stats"]
