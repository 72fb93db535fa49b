"""Release switches on a fleet of three hosts (two under systemd, one under
supervisor; the first two on RabbitMQ, the third on Redis), as a user runs them:
`ansible-playbook celeryops.celery.release` and `celeryops.celery.rollback`.

A stream of short tasks (one every 0.05 s, to each host's own queue in turn)
runs through every switch; a long task is in flight on the first host. The
checks run in order: v1 (converge) -> v2 (overlap, rolling) -> back to v1
(rollback) -> v3 (restart, cold shutdown of a task longer than the window) ->
v4 (broken: back to v3) -> bad input -> the site playbook changes nothing
-> ... -> Beat on two hosts with RedBeat's lock through a release (v20)."""
import concurrent.futures
import json
import os
import time

import pytest
import yaml

from release_checks import (APP, BEAT_HOST, DRAIN_TASK, HOSTS, MANAGERS, REQUIREMENTS_TASK, ROOT, Stream, active_ids, app_process_cwds,
                            assert_own_copy, beat_count, handover_left, link, make_release, ok, playbook, probe,
                            run_site, sh, task_results, venv_copied, watchdog_log, whoami, worker_log_tail)
from celery_checks import (SHARED_CHECKS, assert_held_task_ran_once, assert_never_twice, failed_tasks, json_report, recap,
                           shared_check_runs, wait, while_held)

RELEASES = {}
# How much longer than with nothing switching a host's own queue may pause
# during a switch.
PAUSE_OVER_QUIET = 1.0


@pytest.fixture(scope="module")
def quiet_pause():
    """The longest pause of each host's own queue under the same stream with
    nothing switching, measured on this machine in this run: what the stream
    itself costs here (a loaded machine publishes and consumes unevenly)."""
    with Stream() as stream:
        time.sleep(10)
    return {host: stream.longest_pause(host) for host in HOSTS}


def assert_no_pause(stream, quiet_pause):
    for host in HOSTS:
        bound = quiet_pause[host] + PAUSE_OVER_QUIET
        assert stream.longest_pause(host) <= bound, "%s: pause %.2fs, bound %.2fs (%.2fs with nothing switching): %s" % (
            host, stream.longest_pause(host), bound, quiet_pause[host], stream.summary())


def released_everywhere(release):
    for host in HOSTS:
        assert link(host, "current") == "%s/releases/%s" % (ROOT, release), host
        assert whoami(host)["version"] == release.lstrip("v"), host
        # No process of the app runs code of another release.
        for pid, cwd, cmdline in app_process_cwds(host):
            assert cwd == "%s/releases/%s" % (ROOT, release), "%s: pid %s (%s) runs in %s" % (host, pid, cmdline, cwd)
        assert handover_left(host) == "", "%s: handover workers left: %s" % (host, handover_left(host))
    assert sum(beat_count(h) for h in HOSTS) == 1


@pytest.mark.switches
def test_first_release_runs_everywhere_with_one_beat():
    released_everywhere("v1")
    assert beat_count(BEAT_HOST) == 1


@pytest.mark.switches
def test_workers_cannot_write_the_release_or_its_virtualenv():
    for host in HOSTS:
        for path in ("%s/current/celery_testapp" % ROOT, "%s/current/.venv/lib" % ROOT, "%s/releases" % ROOT):
            proc = sh(host, "runuser -u %s -- touch %s/.probe-write" % (APP, path), check=False)
            assert proc.returncode != 0, "%s: the worker user can write %s" % (host, path)
        proc = sh(host, "runuser -u %s -- touch /var/lib/%s/.probe-write && rm /var/lib/%s/.probe-write" % (APP, APP, APP), check=False)
        assert proc.returncode == 0, "%s: the worker user cannot write its state dir: %s" % (host, proc.stderr)


@pytest.mark.switches
def test_overlap_release_rolls_across_the_fleet_without_pause_or_loss(tmp_path, quiet_pause):
    src = make_release(tmp_path, "2")
    # A task that runs until the test releases it, in flight on the first
    # host's old workers; released only once that host has switched its links
    # to v2 and the play waits on the old workers' drain.
    host, node = HOSTS[0], "default@" + HOSTS[0]
    release_file = "/var/lib/%s/release-overlap" % APP
    sh(host, "rm -f %s" % release_file)
    held = probe(host, "send", "hold", release_file, "--queue", "host." + host)
    wait(lambda: held in active_ids(host, node), 120, "the held task to start on %s" % node)
    switched = []

    def links_switched():
        if link(host, "current") == "%s/releases/v2" % ROOT:
            switched.append(time.time())
        return switched

    start = time.time()
    with Stream() as stream:
        # A real task, on each host's own queue, must succeed after its switch.
        result = ok(while_held(
            lambda: playbook("release", celery_release_src=src, celery_release_id="v2",
                             celery_release_verify_task={"name": "celery_testapp.app.record",
                                                         "args": [0, "celery_testapp:verify"],
                                                         "queue": "host.{{ inventory_hostname }}", "timeout": 60}),
            links_switched, lambda: sh(host, "touch %s && chmod 0644 %s" % (release_file, release_file)),
            "the links of %s to switch to v2" % host))
    sh(host, "rm -f %s" % release_file)
    RELEASES["v2"] = {"wall": round(time.time() - start, 1), "stream": stream.summary()}
    print(json.dumps(RELEASES["v2"]))
    assert stream.published >= 200
    stream.assert_nothing_lost_and_nothing_run_twice_but_at_a_stop()
    # Each host's own queue is consumed without a pause, during its switch too.
    assert_no_pause(stream, quiet_pause)
    assert stream.versions() == ["1", "2"]
    stream.beat.assert_sampled()
    assert stream.beat.overlaps() == [], "two Beats at once: %s" % stream.summary()
    # The held task ran through the first host's switch on the old code, once,
    # to its end: not killed and delivered again to the new release.
    ran = assert_held_task_ran_once(probe(host, "wait", held, "--timeout", 120))
    assert ran["version"] == "1", ran
    assert ran["started"] < switched[0] < ran["finished"], "the task was not in flight at the switch: %s" % ran
    released_everywhere("v2")
    for each in HOSTS:
        assert link(each, "previous") == "%s/releases/v1" % ROOT
    # The env file's values never reach Ansible's output.
    assert "PLAY RECAP" in result.stdout and "s3cr3t-value-must-not-leak" not in result.stdout + result.stderr
    verified = probe(HOSTS[0], "records", "--key", "celery_testapp:verify")
    assert sorted((r["hostname"], r["version"]) for r in verified) == sorted((h, "2") for h in HOSTS), verified


@pytest.mark.switches
def test_rollback_brings_the_previous_release_back_the_same_way(quiet_pause):
    with Stream() as stream:
        report = json_report(ok(playbook("rollback", callback="ansible.builtin.json")))
    # The shared checks ran once per host and play, though the rollback's
    # plays apply several roles that need them.
    for shared in SHARED_CHECKS:
        runs = shared_check_runs(report, shared)
        assert {host for _play, host in runs} == set(HOSTS) and set(runs.values()) == {1}, (shared, runs)
    print(json.dumps(stream.summary()))
    stream.assert_nothing_lost_and_nothing_run_twice_but_at_a_stop()
    assert_no_pause(stream, quiet_pause)
    released_everywhere("v1")
    for host in HOSTS:
        # The release left is kept, as the previous one.
        assert link(host, "previous") == "%s/releases/v2" % ROOT
        assert sh(host, "test -x %s/releases/v2/.venv/bin/celery" % ROOT, check=False).returncode == 0


def test_restart_strategy_with_cold_shutdown_loses_nothing(tmp_path):
    """Strategy restart, with a warm-shutdown window of 2 s and cold shutdown
    after it: the stream loses nothing, and on every host (both brokers, both
    managers) a task longer than the window (task_acks_late,
    task_reject_on_worker_lost) is redelivered and completed by the new
    release."""
    # From a tar archive with a top-level directory this time.
    src = make_release(tmp_path, "3", archive=True)
    # Each runs an hour on its first delivery, so it is still running when its
    # worker drains however long the play takes to get there (this check
    # shares the machine with other scenarios), and returns at once when
    # delivered again. A task on every host also puts each SIGQUIT where the
    # cold shutdown is meant for: a worker whose warm shutdown waits on a
    # running task. A worker with nothing running ends its warm shutdown
    # within seconds, and on a busy machine the SIGQUIT at 2 s could come at
    # any step of that end instead (its broker connection closing, say).
    long_tasks = {h: probe(h, "send", "long_once", 3600, "--queue", "host." + h) for h in HOSTS}
    running = {h: link(h, "current") for h in HOSTS}
    # Half the switches' density (a task every 0.3 s per queue): no pause is
    # bounded here, and each task costs CPU the checks beside this one need.
    with Stream(interval=0.1) as stream:
        result = ok(playbook("release", callback="ansible.builtin.json", celery_release_src=src, celery_release_id="v3",
                             celery_release_strategy="restart", celery_release_serial=3, celery_release_stop_timeout=2,
                             celery_release_on_timeout="cold", celery_release_archive_extra_opts=["--strip-components=1"]))
    print(json.dumps(stream.summary()))
    report = json_report(result)
    # The cold shutdown must end by itself within celery_release_cold_timeout
    # (its default): a worker killed before it closes its broker connection
    # leaves the messages it had prefetched unacknowledged, and Redis delivers
    # them again only after its visibility_timeout (1 h by default).
    outcomes = {h: sorted({s["outcome"] for s in r["services"]})
                for h, r in task_results(report, DRAIN_TASK).items() if not r.get("skipped")}
    print(json.dumps({"drain_outcomes": outcomes}))
    assert sorted(outcomes) == sorted(HOSTS), outcomes
    killed = [h for h, o in outcomes.items() if "killed" in o]
    assert not killed, "a drain ended in SIGKILL: %s; the workers' last words: %s" % (
        outcomes, {h: worker_log_tail(h) for h in killed})
    # Every host's warm window ended on its running task.
    assert all("cold" in o for o in outcomes.values()), outcomes
    # A cold shutdown is at-least-once: a short task that ran but was not yet
    # acknowledged when the cold stop came is delivered again (seen once: one
    # record of 2284 ran twice). Nothing may be lost; the warm strategies
    # above run a task twice only at a warm stop (see the Stream's check).
    assert stream.lost() == [], stream.summary()
    for host, long_task in long_tasks.items():
        done = probe(host, "wait", long_task, "--timeout", 120)
        assert done["state"] == "SUCCESS", (host, done)
        assert done["result"]["attempt"] == 2, "the task was not delivered twice on %s: %s" % (host, done)
        assert done["result"]["version"] == "3", "the task was not redelivered to the new release on %s: %s" % (host, done)
    released_everywhere("v3")
    # v3's requirements are the running release's: each host copied its
    # virtualenv instead of installing one.
    for h in HOSTS:
        assert venv_copied(report, h)["reused"], venv_copied(report, h)
        assert_own_copy(h, "v3", running[h])
    ran = {h: r for h, r in task_results(report, REQUIREMENTS_TASK).items() if not r.get("skipped")}
    assert ran == {}, "pip installed the unchanged requirements: %s" % sorted(ran)


BAD_INPUT = {
    "missing release source": ({"celery_release_src": ""}, ["celery_release_src is not set"]),
    "release source missing on the controller": ({"celery_release_src": "/nonexistent/app"},
                                                 ["celery_release_src", "/nonexistent/app", "does not exist"]),
    "release id that exists": ({"celery_release_id": "v1"}, ["celery_release_id", "v1", "already exists"]),
    "unsafe release id": ({"celery_release_id": "../x"}, ["celery_release_id", "letters, digits"]),
    "unknown strategy": ({"celery_release_strategy": "bluegreen"}, ["celery_release_strategy", "overlap", "restart"]),
    "warm-shutdown window below 1": ({"celery_release_stop_timeout": 0}, ["celery_release_stop_timeout", "at least 1"]),
    "warm-shutdown window at the redelivery timeout": (
        {"celery_release_stop_timeout": 3600},
        ["celery_release_stop_timeout (3600 s) must be below celery_broker_redelivery_timeout (3600 s, the default for redis://)",
         "visibility_timeout"]),
    "unknown on_timeout": ({"celery_release_on_timeout": "wait"}, ["celery_release_on_timeout", "fail", "cold", "kill"]),
    "too few releases kept": ({"celery_releases_keep": 1}, ["celery_releases_keep", "2 or more"]),
    "virtualenv outside the release": ({"celery_venv": "/opt/venv"}, ["celery_venv", "/.venv"]),
    "verify task without name": ({"celery_release_verify_task": {"args": [1]}},
                                 ["celery_release_verify_task", "`name`"]),
    "Beat's lock before the running release holds RedBeat": (
        {"celery_beat_hosts": [HOSTS[2]]},
        ["celery_beat_hosts", "cannot import 'redbeat'", "release the app with celery-redbeat in its requirements first"]),
    # The release's requirements may bring gevent; the running release's
    # virtualenv, which the install play configures first, does not hold it.
    "a gevent worker before the running release holds gevent": (
        {"celery_workers": [{"name": "default", "queues": ["celery", "host." + HOSTS[2]]},
                            {"name": "green", "queues": ["green"], "pool": "gevent"}]},
        ["celery_workers green use pool 'gevent'", "cannot import 'gevent'", "release the app with gevent in its requirements first"]),
}
# Rollbacks, on the same host: to a release that is not installed, and with
# no previous release (its `previous` link moved aside for the run).
BAD_ROLLBACK = {
    "rollback to a release not installed": ({"celery_rollback_to": "v8"},
                                            ["Release v8 (celery_rollback_to) is not installed", "v8/.venv/bin/celery"]),
    "rollback with no previous release": ({}, ["There is no previous release", "celery_rollback_to"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every bad-input case run against one host, three at a time (none may
    change anything, so they cannot disturb each other); then what changed."""
    host = HOSTS[2]
    src = make_release(tmp_path_factory.mktemp("bad-input"), "9")
    saved = "/root/.release-previous-link"
    sh(host, "mv %s/previous %s" % (ROOT, saved))
    # A running release without RedBeat (the test app's requirements hold it).
    site_packages = 'd=$(echo %s/current/.venv/lib/python3*/site-packages) && ' % ROOT
    try:
        sh(host, site_packages + 'mv "$d/redbeat" "$d/redbeat.hidden"')
        sh(host, "touch /root/.release-marker && sleep 1")
        assert sh(host, "test -f /root/.release-marker", check=False).returncode == 0, "the marker was not made"

        def run(case):
            if case in BAD_ROLLBACK:
                variables = dict(BAD_ROLLBACK[case][0])
                name = "rollback"
                if case == "rollback to a release not installed":
                    # Here a previous release must exist: the check looks for the named one.
                    return case, None
            else:
                variables = {"celery_release_src": src, "celery_release_id": "v9"}
                variables.update(BAD_INPUT[case][0])
                name = "release"
            return case, playbook(name, limit=host, callback="ansible.builtin.json", **variables)

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            results = dict(pool.map(run, sorted(BAD_INPUT) + sorted(BAD_ROLLBACK)))
        changed = sh(host, "find /etc /srv /usr/local /var/lib/%s -newer /root/.release-marker "
                           "-not -path '/var/lib/systemd/*'" % APP).stdout.strip()
    finally:
        sh(host, "mv %s %s/previous" % (saved, ROOT))
        sh(host, site_packages + 'if [ -d "$d/redbeat.hidden" ]; then mv "$d/redbeat.hidden" "$d/redbeat"; fi')
    # With the previous link back: a rollback to a release that is not installed.
    sh(host, "touch /root/.release-marker && sleep 1")
    results["rollback to a release not installed"] = playbook(
        "rollback", limit=host, callback="ansible.builtin.json", **BAD_ROLLBACK["rollback to a release not installed"][0])
    changed += sh(host, "find /etc /srv /usr/local /var/lib/%s -newer /root/.release-marker "
                        "-not -path '/var/lib/systemd/*'" % APP).stdout.strip()
    return results, changed


@pytest.mark.parametrize("case", sorted(BAD_INPUT) + sorted(BAD_ROLLBACK))
def test_bad_release_input_fails_before_any_change(case, bad_input_runs):
    results, changed = bad_input_runs
    result = results[case]
    expected = (BAD_INPUT.get(case) or BAD_ROLLBACK[case])[1]
    assert result.returncode != 0, result.stdout[-3000:]
    report = json_report(result)
    messages = [msg for _task, _host, msg in failed_tasks(report)]
    assert any(all(text in msg for text in expected) for msg in messages), \
        "no failed task's message says all of %r:\n%s" % (expected, "\n".join(messages))
    assert all(stats.get("changed", 0) == 0 for stats in report["stats"].values()), report["stats"]
    assert changed == "", "the failed runs changed %s" % changed


def test_site_playbook_after_releases_changes_nothing():
    result = ok(run_site())
    hosts = recap(result.stdout)
    assert sorted(hosts) == sorted(HOSTS), result.stdout[-3000:]
    assert {h: v["changed"] for h, v in hosts.items()} == {h: 0 for h in HOSTS}, result.stdout[-3000:]
    released_everywhere("v3")


def test_the_status_shows_each_hosts_release_and_beat_on_its_host_only(tmp_path):
    report = tmp_path / "status.json"
    result = ok(playbook("status", celery_status_json=str(report)))
    with open(str(report)) as handle:
        fleet = json.load(handle)
    assert sorted(fleet) == sorted(HOSTS), fleet
    for host in HOSTS:
        seen = fleet[host]
        assert seen["manager"] == MANAGERS[host] and seen["problems"] == [], seen
        assert seen["release"] == {"current": "v3", "previous": link(host, "previous").rsplit("/", 1)[1]}, seen["release"]
        assert (seen["beat"]["state"] == "running") == (host == BEAT_HOST), (host, seen["beat"])
        assert [(w["name"], w["state"], w["answers_ping"]) for w in seen["workers"]] == [("default", "running", True)], seen
        assert sorted(seen["workers"][0]["queues"]) == sorted(["celery", "host." + host]), seen["workers"][0]
    # The table: the Beat host's line says so.
    assert any(line.strip(' "').startswith(BEAT_HOST + "  ") and "Beat runs here" in line
               for line in result.stdout.splitlines()), result.stdout[-3000:]


def test_old_releases_are_pruned_but_never_the_current_or_previous(tmp_path):
    host = HOSTS[0]
    before = sh(host, "ls %s/releases" % ROOT).stdout.split()
    assert before == ["v1", "v2", "v3"], before
    # v5 adds a requirement (one the virtualenv holds already, so pip needs no
    # download): its virtualenv is installed, not copied.
    result = ok(playbook("release", limit=host, callback="ansible.builtin.json",
                         celery_release_src=make_release(tmp_path, "5", extra_requirement="vine"),
                         celery_release_id="v5", celery_releases_keep=2))
    report = json_report(result)
    assert venv_copied(report, host) == {"reused": False, "changed": False,
                                         "reason": "the running virtualenv holds other dependencies"}
    assert task_results(report, REQUIREMENTS_TASK)[host].get("changed"), task_results(report, REQUIREMENTS_TASK)
    # The two newest (v5, v3) stay; v3 is also the previous one. v1 and v2 go.
    assert sh(host, "ls %s/releases" % ROOT).stdout.split() == ["v3", "v5"]
    assert link(host, "current") == "%s/releases/v5" % ROOT and link(host, "previous") == "%s/releases/v3" % ROOT
    assert whoami(host, release="v5")["version"] == "5"
    # v3's virtualenv, a copy of v1's, still runs with v1 gone.
    assert sh(host, "%s/releases/v3/.venv/bin/celery --version" % ROOT).stdout.strip().startswith("5.")


def test_a_failed_install_removes_itself(tmp_path):
    # pip fails on the release's requirements.txt: the play fails in the
    # install, releases/v6 is gone, and the running release is untouched.
    host = HOSTS[1]
    current, version = link(host, "current"), whoami(host)["version"]
    src = make_release(tmp_path, "6", bad_requirement=True)
    result = playbook("release", limit=host, callback="ansible.builtin.json", celery_release_src=src, celery_release_id="v6")
    assert result.returncode != 0, result.stdout[-3000:]
    messages = [msg for _task, _host, msg in failed_tasks(json_report(result))]
    assert any("Installing release v6 on %s failed" % host in msg and "the running release is unchanged" in msg
               for msg in messages), messages
    assert sh(host, "test -e %s/releases/v6" % ROOT, check=False).returncode != 0, "the failed install is left"
    assert link(host, "current") == current and whoami(host)["version"] == version


def batch_order():
    """The hosts in the order the play takes them (the inventory's group order)."""
    with open(os.environ["MOLECULE_INVENTORY_FILE"]) as handle:
        order = list(yaml.safe_load(handle)["celery_workers"]["hosts"])
    assert sorted(order) == sorted(HOSTS), order
    return order


def test_a_broken_release_goes_back_and_the_play_stops_past_max_fail_percentage(tmp_path):
    """Batches of two (serial 2), celery_release_max_fail_percentage 0: release
    v7's app fails to import on the first batch's second host only. That host
    fails verification and goes back to its release, under the task stream,
    losing nothing; its batch mate gets v7; the play stops before the second
    batch (the third host). Without the limit Ansible would go on: a batch
    stops the play by itself only when all its hosts failed."""
    first, mate, last = batch_order()
    before = {host: link(host, "current") for host in HOSTS}
    release_before = {host: path.rsplit("/", 1)[1] for host, path in before.items()}
    src = make_release(tmp_path, "7", broken_on=mate)
    # A task every 0.6 s per queue is dense enough to show a loss; the
    # switches' pause bounds need the default's density, this check does not.
    with Stream(interval=0.2) as stream:
        result = playbook("release", callback="ansible.builtin.json", celery_release_src=src, celery_release_id="v7",
                          celery_release_serial=2, celery_release_max_fail_percentage=0)
    print(json.dumps(stream.summary()))
    assert result.returncode != 0, result.stdout[-3000:]
    failures = failed_tasks(json_report(result))
    assert {host for _task, host, _msg in failures} == {mate}, failures
    assert any("Release v7 failed on %s" % mate in msg and "failed to import" in msg
               and "%s is back on release %s" % (mate, release_before[mate]) in msg for _task, _host, msg in failures), failures
    stream.assert_nothing_lost_and_nothing_run_twice_but_at_a_stop()
    assert link(mate, "current") == before[mate], "the failed host is not back on its release"
    assert sh(mate, "test -e %s/releases/v7" % ROOT, check=False).returncode != 0, "the failed release is left"
    assert whoami(mate)["version"] == release_before[mate].lstrip("v")
    assert link(first, "current") == "%s/releases/v7" % ROOT and whoami(first, release="v7")["version"] == "7"
    assert link(last, "current") == before[last], "the play went on to the next batch"
    assert whoami(last)["version"] == release_before[last].lstrip("v")


def test_the_watchdog_restarted_no_worker_through_every_switch():
    """The watchdog (celery_watchdog_enabled) watched every host through every
    switch above and the first part's: the overlap release and the rollback,
    the restart strategy's cold shutdown, the pruning release, the broken
    release and its way back. It restarted and killed no worker, and each
    switch restarted it on the release it switched to (released_everywhere
    sees no process of the app, its probe included, left on another one)."""
    seen = {}
    for host in HOSTS:
        log = watchdog_log(host)
        # Its own lines only: runuser, which runs its probe, says "Session
        # terminated, killing shell..." when a switch restarts the watchdog.
        seen[host] = {"starts": log.count("celery-watchdog: watching "),
                      "judged": [line for line in log.splitlines()
                                 if line.startswith("celery-watchdog: ") and ("restarting" in line or "killing" in line)]}
    print(json.dumps(seen))
    for host, found in seen.items():
        # Started by the first release, then by the overlap release, the
        # rollback and the restart strategy's release on every host.
        assert found["starts"] >= 4, "%s: the watchdog started %d times (a switch restarts it)" % (host, found["starts"])
        assert found["judged"] == [], "%s: the watchdog restarted a worker during a switch: %s" % (host, found["judged"])


# Beat with RedBeat's lock on the two RabbitMQ hosts (one under systemd, one
# under supervisor); the lock in the Redis, named since the broker is not one.
FAILOVER = {"celery_beat_hosts": [BEAT_HOST, HOSTS[1]], "celery_beat_lock_url": "redis://rl-broker:6379/0"}
# The schedule's interval (molecule.yml's CELERY_TESTAPP_BEAT_INTERVAL).
BEAT_INTERVAL = 1


def published(since):
    """(time, host) of every Beat tick sent since `since`, from the one Redis
    the fleet's results share."""
    host = HOSTS[2]
    release = link(host, "current").rsplit("/", 1)[1]
    return sorted((t["at"], t["hostname"]) for t in probe(host, "published", release=release) if t["at"] >= since)


def ticking_hosts(seconds=5.0):
    start = time.time()
    time.sleep(seconds)
    ticks = published(start)
    assert len(ticks) >= seconds / 2, "%d ticks in %s s: %s" % (len(ticks), seconds, ticks)
    return sorted({host for _at, host in ticks})


def test_a_release_switch_with_beat_on_two_hosts_keeps_one_beat_ticking(tmp_path):
    """celery_beat_hosts through a rolling release: the test app's
    requirements hold celery-redbeat (checked as installed, not against the
    site run's packages), and a release turns the lock on (applied to the
    running release, then each host switched in turn): both hosts run Beat,
    one ticks, and no two ticks are ever closer than half the interval, from
    the release to a site run back to one Beat."""
    assert ticking_hosts() == [BEAT_HOST]
    start = time.time()
    limit = ",".join(FAILOVER["celery_beat_hosts"])
    ok(playbook("release", limit=limit, celery_release_src=make_release(tmp_path, "20"), celery_release_id="v20", **FAILOVER))
    for host in FAILOVER["celery_beat_hosts"]:
        assert link(host, "current") == "%s/releases/v20" % ROOT, host
        assert beat_count(host) == 1, "%s runs %d Beats" % (host, beat_count(host))
    assert beat_count(HOSTS[2]) == 0
    assert len(ticking_hosts()) == 1
    assert_never_twice(published(start), BEAT_INTERVAL, "through the release into failover")

    # Back to one Beat on its host, by the site run (of the hosts that ran Beat).
    before = time.time()
    ok(run_site(limit=limit))
    assert [beat_count(h) for h in HOSTS] == [1, 0, 0]
    assert ticking_hosts() == [BEAT_HOST]
    assert_never_twice(published(before), BEAT_INTERVAL, "through the site run back to one Beat")
