"""Release switches on a fleet of three hosts (two under systemd, one under
supervisor) behind one Redis, as a user runs them:
`ansible-playbook celeryops.celery.release` and `celeryops.celery.rollback`.

A stream of short tasks (one every 0.05 s, to each host's own queue in turn)
runs through every switch; a long task is in flight on the first host. The
checks run in order: v1 (converge) -> v2 (overlap, rolling) -> back to v1
(rollback) -> v3 (restart, cold shutdown of a task longer than the window) ->
v4 (broken: back to v3) -> bad input -> the site playbook changes nothing."""
import concurrent.futures
import json
import time

import pytest

from release_checks import (APP, BEAT_HOST, HOSTS, ROOT, Stream, app_process_cwds, beat_count,
                            handover_left, link, make_release, ok, playbook, probe, run_site, sh, whoami)

RELEASES = {}


def released_everywhere(release):
    for host in HOSTS:
        assert link(host, "current") == "%s/releases/%s" % (ROOT, release), host
        assert whoami(host)["version"] == release.lstrip("v"), host
        # No process of the app runs code of another release.
        for pid, cwd, cmdline in app_process_cwds(host):
            assert cwd == "%s/releases/%s" % (ROOT, release), "%s: pid %s (%s) runs in %s" % (host, pid, cmdline, cwd)
        assert handover_left(host) == "", "%s: stand-in workers left: %s" % (host, handover_left(host))
    assert sum(beat_count(h) for h in HOSTS) == 1


def test_first_release_runs_everywhere_with_one_beat():
    released_everywhere("v1")
    assert beat_count(BEAT_HOST) == 1


def test_workers_cannot_write_the_release_or_its_virtualenv():
    for host in HOSTS:
        for path in ("%s/current/celery_testapp" % ROOT, "%s/current/.venv/lib" % ROOT, "%s/releases" % ROOT):
            proc = sh(host, "runuser -u %s -- touch %s/.probe-write" % (APP, path), check=False)
            assert proc.returncode != 0, "%s: the worker user can write %s" % (host, path)
        proc = sh(host, "runuser -u %s -- touch /var/lib/%s/.probe-write && rm /var/lib/%s/.probe-write" % (APP, APP, APP), check=False)
        assert proc.returncode == 0, "%s: the worker user cannot write its state dir: %s" % (host, proc.stderr)


def test_overlap_release_rolls_across_the_fleet_without_pause_or_loss(tmp_path):
    src = make_release(tmp_path, "2")
    long_task = probe(HOSTS[0], "send", "sleep", 10, "--queue", "host." + HOSTS[0])
    start = time.time()
    with Stream() as stream:
        # A real task, on each host's own queue, must succeed after its switch.
        result = ok(playbook("release", celery_release_src=src, celery_release_id="v2",
                             celery_release_verify_task={"name": "celery_testapp.app.record",
                                                         "args": [0, "celery_testapp:verify"],
                                                         "queue": "host.{{ inventory_hostname }}", "timeout": 60}))
    RELEASES["v2"] = {"wall": round(time.time() - start, 1), "stream": stream.summary()}
    print(json.dumps(RELEASES["v2"]))
    assert stream.published >= 200
    assert stream.lost() == [] and stream.duplicated() == [], stream.summary()
    # Each host's own queue is consumed without a pause, during its switch too.
    for host in HOSTS:
        assert stream.longest_pause(host) <= 1.0, stream.summary()
    assert stream.versions() == ["1", "2"]
    assert max(stream.beat_samples) == 1, "two Beats at once: %s" % stream.summary()
    # The long task was in flight on the first host and finished on the old code.
    done = probe(HOSTS[0], "wait", long_task, "--timeout", 120)
    assert done["state"] == "SUCCESS" and done["result"]["version"] == "1" and done["result"]["slept"] >= 10
    released_everywhere("v2")
    for host in HOSTS:
        assert link(host, "previous") == "%s/releases/v1" % ROOT
    # The env file's values never reach Ansible's output.
    assert "PLAY RECAP" in result.stdout and "s3cr3t-value-must-not-leak" not in result.stdout + result.stderr
    verified = probe(HOSTS[0], "records", "--key", "celery_testapp:verify")
    assert sorted((r["hostname"], r["version"]) for r in verified) == sorted((h, "2") for h in HOSTS), verified


def test_rollback_brings_the_previous_release_back_the_same_way():
    with Stream() as stream:
        ok(playbook("rollback"))
    print(json.dumps(stream.summary()))
    assert stream.lost() == [] and stream.duplicated() == [], stream.summary()
    for host in HOSTS:
        assert stream.longest_pause(host) <= 1.0, stream.summary()
    released_everywhere("v1")
    for host in HOSTS:
        # The release left is kept, as the previous one.
        assert link(host, "previous") == "%s/releases/v2" % ROOT
        assert sh(host, "test -x %s/releases/v2/.venv/bin/celery" % ROOT, check=False).returncode == 0


def test_restart_strategy_with_cold_shutdown_loses_nothing(tmp_path):
    """Strategy restart, with a warm-shutdown window of 2 s and cold shutdown
    after it: the stream loses nothing, and a task longer than the window
    (task_acks_late, task_reject_on_worker_lost) is redelivered and completed
    by the new release."""
    # From a tar archive with a top-level directory this time.
    src = make_release(tmp_path, "3", archive=True)
    host = HOSTS[0]
    # Runs 600 s on its first delivery, so it is still running when its
    # worker drains, and returns at once when delivered again.
    long_task = probe(host, "send", "long_once", 600, "--queue", "host." + host)
    with Stream() as stream:
        ok(playbook("release", celery_release_src=src, celery_release_id="v3", celery_release_strategy="restart",
                    celery_release_serial=3, celery_release_stop_timeout=2, celery_release_on_timeout="cold",
                    celery_release_cold_timeout=5, celery_release_archive_extra_opts=["--strip-components=1"]))
    print(json.dumps(stream.summary()))
    assert stream.lost() == [] and stream.duplicated() == [], stream.summary()
    done = probe(host, "wait", long_task, "--timeout", 120)
    assert done["state"] == "SUCCESS", done
    assert done["result"]["attempt"] == 2, "the task was not delivered twice: %s" % done
    assert done["result"]["version"] == "3", "the task was not redelivered to the new release: %s" % done
    released_everywhere("v3")


def test_broken_release_fails_verification_and_goes_back(tmp_path):
    src = make_release(tmp_path, "4", broken=True)
    host = HOSTS[1]
    with Stream() as stream:
        result = playbook("release", limit=host, celery_release_src=src, celery_release_id="v4")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Release v4 failed on %s" % host in output, output[-4000:]
    assert "failed to import" in output and "back on release v3" in output, output[-4000:]
    assert stream.lost() == [] and stream.duplicated() == [], stream.summary()
    released_everywhere("v3")
    assert sh(host, "test -e %s/releases/v4" % ROOT, check=False).returncode != 0, "the failed release is left"
    assert whoami(host)["version"] == "3"


BAD_INPUT = {
    "missing release source": ({"celery_release_src": ""}, ["celery_release_src is not set"]),
    "release source missing on the controller": ({"celery_release_src": "/nonexistent/app"},
                                                 ["celery_release_src", "/nonexistent/app", "does not exist"]),
    "release id that exists": ({"celery_release_id": "v1"}, ["celery_release_id", "v1", "already exists"]),
    "unsafe release id": ({"celery_release_id": "../x"}, ["celery_release_id", "letters, digits"]),
    "unknown strategy": ({"celery_release_strategy": "bluegreen"}, ["celery_release_strategy", "overlap", "restart"]),
    "warm-shutdown window below 1": ({"celery_release_stop_timeout": 0}, ["celery_release_stop_timeout", "at least 1"]),
    "unknown on_timeout": ({"celery_release_on_timeout": "wait"}, ["celery_release_on_timeout", "fail", "cold", "kill"]),
    "too few releases kept": ({"celery_releases_keep": 1}, ["celery_releases_keep", "2 or more"]),
    "virtualenv outside the release": ({"celery_venv": "/opt/venv"}, ["celery_venv", "/.venv"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every bad-input case run against one host, three at a time (none may
    change anything, so they cannot disturb each other); then what changed."""
    host = HOSTS[2]
    sh(host, "touch /root/.release-marker && sleep 1")
    src = make_release(tmp_path_factory.mktemp("bad-input"), "9")

    def run(case):
        variables = {"celery_release_src": src, "celery_release_id": "v9"}
        variables.update(BAD_INPUT[case][0])
        return case, playbook("release", limit=host, **variables)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, sorted(BAD_INPUT)))
    changed = sh(host, "find /etc /srv /usr/local /var/lib/%s -newer /root/.release-marker "
                       "-not -path '/var/lib/systemd/*' | head" % APP).stdout.strip()
    return results, changed


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_release_input_fails_before_any_change(case, bad_input_runs):
    results, changed = bad_input_runs
    result = results[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for text in BAD_INPUT[case][1]:
        assert text in output, "%r not in the error:\n%s" % (text, output[-3000:])
    assert changed == "", "the failed runs changed %s" % changed


def test_site_playbook_after_releases_changes_nothing():
    result = ok(run_site())
    assert "changed=0" in result.stdout and "changed=1" not in result.stdout, result.stdout[-3000:]
    released_everywhere("v3")


def test_old_releases_are_pruned_but_never_the_current_or_previous(tmp_path):
    host = HOSTS[0]
    before = sh(host, "ls %s/releases" % ROOT).stdout.split()
    assert before == ["v1", "v2", "v3"], before
    ok(playbook("release", limit=host, celery_release_src=make_release(tmp_path, "5"), celery_release_id="v5",
                celery_releases_keep=2))
    # The two newest (v5, v3) stay; v3 is also the previous one. v1 and v2 go.
    assert sh(host, "ls %s/releases" % ROOT).stdout.split() == ["v3", "v5"]
    assert link(host, "current") == "%s/releases/v5" % ROOT and link(host, "previous") == "%s/releases/v3" % ROOT
    assert whoami(host, release="v5")["version"] == "5"
