"""Beat runs on exactly one host under either process manager: one tick per
interval, moved with celery_beat_host without ever running twice, and a
switch of process manager keeps one set of workers and loses no task.

The checks run in order and re-run the site playbook the way a user would."""
import json
import os
import time
import uuid

import pytest
import testinfra
import yaml

from celery_checks import (BEAT_PATTERN, CeleryHost, ProcessWatch, assert_held_task_ran_once, changed_hosts, failed_tasks, json_report,
                           run_site, task_hosts, while_held)
from flower_checks import PASSWORD as FLOWER_PASSWORD, USER as FLOWER_USER, Flower, assert_flower_shows_the_fleet

FIRST, SECOND = "bt-debian-12", "bt-ubuntu-2404"
INTERVAL = 2.0
# roles/common/tasks/venv_prerequisites.yml: runs only when dpkg-query finds a package missing.
APT_TASK = "celeryops.celery.common : Install what creating a virtualenv needs"


def celery_host(name, manager):
    host = testinfra.get_host("ansible://" + name, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])
    return CeleryHost(host, manager=manager)


def hosts(manager):
    return {name: celery_host(name, manager) for name in (FIRST, SECOND)}


def converge(**extra_vars):
    result = run_site(extra_vars)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


def count_ticks(celery, seconds):
    """Ticks executed over a window of `seconds`, with the gaps between them.
    The window is taken on the clock the ticks are stamped with (the hosts
    share the machine's clock), from after the clearing to before the reading,
    so that slow probe calls on a loaded machine do not widen it."""
    celery.probe("clear-ticks")
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    ticks = sorted(t["at"] for t in celery.probe("ticks") if start <= t["at"] < end)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    return ticks, gaps


def assert_one_tick_per_interval(celery, seconds=12.0):
    ticks, gaps = count_ticks(celery, seconds)
    expected = seconds / INTERVAL
    assert abs(len(ticks) - expected) <= 1.5, "%d ticks in %ss, expected about %d: %s" % (len(ticks), seconds, expected, gaps)
    assert min(gaps) > INTERVAL / 2, "two ticks %.2fs apart: Beat runs twice" % min(gaps)


def beat_hosts(manager):
    return sorted(name for name, celery in hosts(manager).items() if celery.beat_pids())


def beat_watch():
    """Samples both hosts for Beat processes while a play runs:
    `with beat_watch() as watch: <play>`, then watch.assert_sampled() before
    trusting watch.overlaps() (a watch that missed part of the play or never
    saw Beat would report no overlap)."""
    return ProcessWatch((FIRST, SECOND), "testapp", BEAT_PATTERN)


def test_beat_runs_on_the_first_host_only():
    assert beat_hosts("systemd") == [FIRST]
    first = celery_host(FIRST, "systemd")
    assert first.host.service("testapp-beat.service").is_enabled
    assert not celery_host(SECOND, "systemd").host.file("/etc/systemd/system/testapp-beat.service").exists
    # shelve adds the extension of the dbm module at hand (.db, .dat ...).
    owners = first.sh("stat -c %U /var/lib/testapp/celerybeat-schedule*").stdout.split()
    assert owners and set(owners) == {"testapp"}, owners
    # Flower runs beside Beat, its default host.
    assert first.host.service("testapp-flower.service").is_running
    assert not celery_host(SECOND, "systemd").host.file("/etc/systemd/system/testapp-flower.service").exists


def test_beat_fires_one_task_per_interval():
    assert_one_tick_per_interval(celery_host(FIRST, "systemd"))


def test_beat_unit_is_sandboxed_like_the_workers():
    out = celery_host(FIRST, "systemd").sh("systemd-analyze security testapp-beat.service | tail -n 1").stdout
    score = float(out.split(":")[1].split()[0])
    assert score <= 1.5, out


# The secret values a site run with --diff must keep out of its output (see
# test_secret_values_stay_out_of_a_site_runs_output_and_its_diff): a new env
# value and a new Flower password come in with Beat's move, and go with the
# first manager switch. Each of those runs is recorded here with what the
# hosts' env files held after it.
DIFF_SECRET = "s3cr3t-diff-%s" % uuid.uuid4().hex[:12]
FLOWER_DIFF_SECRET = "fl0wer-diff-%s" % uuid.uuid4().hex[:12]
SECRET_RUNS = {}


def site_vars_with_secrets(new_values):
    """celery_env and celery_flower_basic_auth: the inventory's, or with a new
    secret env value and a new Flower password (new_values)."""
    variables = celery_host(FIRST, "systemd").host.ansible.get_variables()
    env, users = variables["celery_env"], variables["celery_flower_basic_auth"]
    if new_values:
        env, users = dict(env, TESTAPP_DIFF_SECRET=DIFF_SECRET), [dict(users[0], password=FLOWER_DIFF_SECRET)]
    return {"celery_env": env, "celery_flower_basic_auth": users}, env["TESTAPP_SECRET"], users[0]["password"]


def converge_recording_secrets(name, new_values, manager, **extra_vars):
    """A site run with --diff that changes the env file on every host and
    Flower's; records its output and the env files after it in SECRET_RUNS."""
    secret_vars, env_secret, flower_password = site_vars_with_secrets(new_values)
    result = run_site(dict(extra_vars, **secret_vars), diff=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    SECRET_RUNS[name] = {
        "output": output, "adds": new_values,
        "values": (DIFF_SECRET, FLOWER_DIFF_SECRET, env_secret, flower_password),
        "in_file": {host: celery_host(host, manager).sh("grep -c %s /etc/testapp/celery.env || true" % DIFF_SECRET).stdout.strip()
                    for host in (FIRST, SECOND)}}
    return result


def test_moving_the_beat_host_moves_beat_without_two_at_once():
    with beat_watch() as watch:
        converge_recording_secrets("moving Beat, a secret added", True, "systemd", celery_beat_host=SECOND)
    watch.assert_sampled()
    assert watch.overlaps() == [], "Beat ran on two hosts at once: %s" % watch.overlaps()[:3]
    assert beat_hosts("systemd") == [SECOND]
    assert not celery_host(FIRST, "systemd").host.file("/etc/systemd/system/testapp-beat.service").exists
    assert_one_tick_per_interval(celery_host(SECOND, "systemd"))
    # Flower moved with Beat, and answers with its new password.
    assert not celery_host(FIRST, "systemd").host.file("/etc/systemd/system/testapp-flower.service").exists
    assert celery_host(SECOND, "systemd").host.service("testapp-flower.service").is_running
    flower = Flower(SECOND)
    CeleryHost.wait_for(flower.answers, 60, "Flower to answer after its move")
    assert flower.get("/api/workers", auth=(FLOWER_USER, FLOWER_DIFF_SECRET)).status_code == 200


def worker_main_processes(celery):
    """Main processes of Celery workers: a celery worker whose parent is not one."""
    out = celery.sh("ps -u %s -o pid=,ppid=,args= | grep ' worker ' | grep -v grep || true" % celery.user).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    pids = {int(r[0]) for r in rows}
    return [int(r[0]) for r in rows if int(r[1]) not in pids]


def switch_converge(old, new):
    if old == "systemd":
        # The first switch also takes back the secret values Beat's move added.
        return converge_recording_secrets("switching to %s, the secret removed" % new, False, new,
                                          celery_beat_host=SECOND, celery_process_manager=new)
    return converge(celery_beat_host=SECOND, celery_process_manager=new)


@pytest.mark.parametrize("old, new", [("systemd", "supervisor"), ("supervisor", "systemd")])
def test_switching_the_manager_keeps_one_set_of_workers_and_every_task(old, new):
    # The task runs until the test releases it, which it does once the old
    # manager's worker has begun its warm shutdown and the play waits for it:
    # in flight through the switch, however slow the machine.
    first = celery_host(FIRST, old)
    release = "/var/lib/testapp/switch-release-%s" % uuid.uuid4().hex
    task_id = first.probe("send", "hold", release)
    runner = first.wait_for(lambda: next((name for name in (FIRST, SECOND) if any(
        t["id"] == task_id for t in celery_host(name, old).active(celery_host(name, old).node("default")))), None),
        120, "the held task to start")
    holder = celery_host(runner, old)
    since, offset = int(holder.sh("date +%s").stdout), holder.log_size("default")
    with beat_watch() as watch:
        while_held(lambda: switch_converge(old, new),
                   lambda: "Warm shutdown" in holder.log_since("default", since, offset=offset),
                   lambda: holder.release(release), "the old worker on %s to begin its warm shutdown" % runner)
    holder.sh("rm -f %s" % release)
    watch.assert_sampled()
    assert watch.overlaps() == [], "Beat ran on two hosts at once: %s" % watch.overlaps()[:3]
    assert_held_task_ran_once(first.probe("wait", task_id, "--timeout", "120"))

    for name, celery in hosts(new).items():
        assert len(worker_main_processes(celery)) == 1, "%s runs %s worker main processes" % (name, worker_main_processes(celery))
        units = celery.sh("ls /etc/systemd/system | grep '^testapp' || true").stdout.split()
        programs = celery.host.file("/etc/supervisor/conf.d/testapp.conf").exists
        if new == "supervisor":
            assert units == [], "%s still has systemd units %s" % (name, units)
            assert programs
        else:
            assert "testapp-worker-default.service" in units and not programs
        assert celery.wait_for(lambda: celery.ping(celery.node("default")), 120, "ping on %s" % name)
        log = celery.sh("journalctl -q -o cat --no-pager; cat /var/log/testapp/*.log 2>/dev/null || true").stdout
        assert "WorkerLostError" not in log
    assert beat_hosts(new) == [SECOND]
    assert_one_tick_per_interval(celery_host(SECOND, new))
    assert_flower_serves_under(new)


def assert_flower_serves_under(manager):
    """Flower runs on the Beat host under manager, its password nowhere but
    in its env file, and shows both hosts' workers and tasks."""
    second = celery_host(SECOND, manager)
    if manager == "supervisor":
        assert "RUNNING" in second.sh("supervisorctl status testapp-flower", check=False).stdout
        conf = second.sh("cat /etc/supervisor/conf.d/testapp-flower.conf").stdout
        assert "envexec" in conf and FLOWER_PASSWORD not in conf, conf
    else:
        assert second.host.service("testapp-flower.service").is_running
    assert FLOWER_PASSWORD not in second.sh("ps -eo user,args").stdout
    flower = Flower(SECOND)
    assert flower.get("/api/workers", auth=None).status_code == 401
    assert flower.get("/api/workers", auth=(FLOWER_USER, FLOWER_PASSWORD)).status_code == 200
    assert_flower_shows_the_fleet(flower, celery_host(FIRST, manager), {"default@" + FIRST, "default@" + SECOND})


def assert_failed_with(result, words, hosts_failed=(FIRST, SECOND)):
    """Each host in hosts_failed has a failed task whose own message holds all the words."""
    failures = failed_tasks(json_report(result))
    for name in hosts_failed:
        messages = [msg for _task, host, msg in failures if host == name]
        assert any(all(w in msg for w in words) for msg in messages), \
            "no failed task's message on %s says all of %r: %r" % (name, words, failures)
    return failures


def snapshot(celery):
    return celery.sh("ls -l --time-style=+%s /etc/systemd/system/testapp* /etc/supervisor/conf.d 2>/dev/null; "
                     "cat /etc/testapp/celery.env | md5sum").stdout


def test_secret_values_stay_out_of_a_site_runs_output_and_its_diff():
    # Two site runs with --diff that really changed the env file on every host
    # and Flower's: Beat's move, which added a secret env value and a new
    # Flower password, and the first manager switch, which took them back.
    assert sorted(SECRET_RUNS) == ["moving Beat, a secret added", "switching to supervisor, the secret removed"], \
        "the site runs this check reads did not run (run the checks above it first): %s" % sorted(SECRET_RUNS)
    for name, run in SECRET_RUNS.items():
        output = run["output"]
        # Without a change there would be nothing to show, and nothing to check.
        assert changed_hosts(output, "celeryops.celery.env : Write the environment file") == {FIRST, SECOND}, \
            "%s: %s" % (name, output[-5000:])
        assert changed_hosts(output, "celeryops.celery.flower : Write Flower's environment file") == {SECOND}, \
            "%s: %s" % (name, output[-5000:])
        # The virtualenv's system packages are there since the converge:
        # dpkg-query says so, and the apt module does not read its cache.
        # (The flower role runs the same task again for its own virtualenv.)
        assert task_hosts(output, APT_TASK, "skipping") == {FIRST, SECOND}, "%s: %s" % (name, output[-5000:])
        assert task_hosts(output, APT_TASK, "ok") | changed_hosts(output, APT_TASK) == set(), "%s: %s" % (name, output[-5000:])
        assert run["in_file"] == dict.fromkeys((FIRST, SECOND), "1" if run["adds"] else "0"), \
            "%s: the env files do not hold the change: %s" % (name, run["in_file"])
        for value in run["values"]:
            assert value not in output, "%s: a secret value is in the output of a site run with --diff:\n%s" % (name, output[-5000:])


def test_a_beat_host_outside_the_play_fails_before_any_change():
    before = {name: snapshot(c) for name, c in hosts("systemd").items()}
    beat_before = {name: c.beat_pids() for name, c in hosts("systemd").items()}
    result = run_site({"celery_beat_host": "nosuchhost"}, callback="ansible.builtin.json")
    assert result.returncode != 0
    assert_failed_with(result, ["celery_beat_host 'nosuchhost' is not a host of this play"])
    assert {name: snapshot(c) for name, c in hosts("systemd").items()} == before
    assert {name: c.beat_pids() for name, c in hosts("systemd").items()} == beat_before


def test_beat_requested_on_two_hosts_by_host_vars_fails_before_any_change(tmp_path):
    with open(os.environ["MOLECULE_INVENTORY_FILE"]) as handle:
        inventory = yaml.safe_load(handle)
    for name in (FIRST, SECOND):
        # Each host names itself: two Beats requested.
        inventory["all"]["hosts"][name]["celery_beat_host"] = name
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(inventory))
    # molecule's group_vars live beside its inventory file.
    os.symlink(os.path.join(os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), "group_vars"), tmp_path / "group_vars")
    before = {name: snapshot(c) for name, c in hosts("systemd").items()}
    result = run_site({}, inventory=str(path), callback="ansible.builtin.json")
    assert result.returncode != 0
    assert_failed_with(result, ["celery_beat_host must name one and the same host", FIRST, SECOND])
    assert {name: snapshot(c) for name, c in hosts("systemd").items()} == before


def test_a_host_of_the_group_outside_the_play_that_still_runs_beat_stops_the_play():
    # The checks above leave Beat on the second host, under systemd. A play
    # limited to the first host that asks for Beat there must not start a
    # second Beat: it cannot remove the one outside the play.
    first, second = celery_host(FIRST, "systemd"), celery_host(SECOND, "systemd")
    assert beat_hosts("systemd") == [SECOND], "the setup of this check is wrong: Beat is not on %s alone" % SECOND
    assert second.host.service("testapp-beat.service").is_running
    with beat_watch() as watch:
        result = run_site({"celery_beat_host": FIRST}, limit=FIRST, callback="ansible.builtin.json")
    watch.assert_sampled()
    assert result.returncode != 0, "the play limited to %s succeeded while Beat runs on %s" % (FIRST, SECOND)
    failures = assert_failed_with(result, ["Beat still runs on %s, outside this play" % SECOND, "--limit"], hosts_failed=(FIRST,))
    assert {host for _task, host, _msg in failures} == {FIRST}, failures
    assert watch.overlaps() == [], "Beat ran on two hosts at once: %s" % watch.overlaps()[:3]
    assert beat_hosts("systemd") == [SECOND]
    assert not first.host.file("/etc/systemd/system/testapp-beat.service").exists
    # The Beat outside the play goes on: a tick is executed after the play.
    second.probe("clear-ticks")
    second.wait_for(lambda: second.probe("ticks"), 60, "a Beat tick after the play", interval=1)
    assert len(second.beat_pids()) == 1
