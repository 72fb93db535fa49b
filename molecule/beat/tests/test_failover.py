"""Beat on both hosts with RedBeat's lock (celery_beat_hosts): one ticks and
the other stands by (and a play limited to one host refuses to start it
beside a Beat without the lock); when the ticking host's container is killed, the other
takes over within the lock's timeout and 10 s; when the killed host comes back
it stands by. The status playbook tells the ticking Beat from the one that
stands by. A switch of the process manager keeps one Beat ticking, and the
failover is proven under supervisor (after the switch), the rest under
systemd. Two inventories, each with one host and its Beat, tick once.
A second site run into failover changes nothing. No two ticks of the schedule (every 2 s) are ever sent closer
than 1 s apart, before, during and after the failover and through the site
runs into and out of it. The ticks are counted from the broker's side: as
Beat hands each to the broker, with the host of the Beat that sent it.

Runs after test_beat.py (Beat on the second host, under systemd) and leaves
Beat there again, on its own, for test_flower.py."""
import json
import os
import re
import time

import yaml

from celery_checks import assert_never_twice, docker, run_site, wait
from test_beat import FIRST, INTERVAL, SECOND, assert_failed_with, celery_host, converge, hosts

# The role's default, so that the bound is the one users get.
LOCK_TIMEOUT = 30
PACKAGES = ["celery[redis]==5.7.0", "celery-redbeat==2.4.2"]


def recap_changed(output):
    """{host: changed count} from a site run's PLAY RECAP."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)}


def sent(celery, since, until=float("inf")):
    """(time, host) of every tick sent from `since` to before `until`, in order."""
    return sorted((t["at"], t["hostname"]) for t in celery.probe("published") if since <= t["at"] < until)


def ticking_host(celery, seconds=12.0):
    """The one host whose Beat sent the ticks of the next `seconds`, after
    checking they came one per interval. The window ends before the reading
    (the hosts share the machine's clock): a probe that is slow on a loaded
    machine must not widen it."""
    start = time.time()
    time.sleep(seconds)
    ticks = sent(celery, start, time.time())
    senders = {host for _at, host in ticks}
    assert len(senders) == 1, "ticks came from %s, not from one host: %s" % (sorted(senders), ticks)
    assert abs(len(ticks) - seconds / INTERVAL) <= 1.5, "%d ticks in %s s: %s" % (len(ticks), seconds, ticks)
    assert_never_twice(ticks, INTERVAL, "while one Beat ticks")
    return senders.pop()


def inventory_of(name, tmp_path):
    """The scenario's inventory with `name` as the only host of the group
    celery_workers: another inventory of the same app, as a second team or
    site would have (the other host stays known, for Flower's place)."""
    with open(os.environ["MOLECULE_INVENTORY_FILE"]) as handle:
        inventory = yaml.safe_load(handle)

    def keep_only(group, group_name):
        if group_name == "celery_workers":
            group["hosts"] = {h: v for h, v in (group.get("hosts") or {}).items() if h == name}
        for child_name, child in (group.get("children") or {}).items():
            keep_only(child or {}, child_name)
    # Molecule writes each group at the top; an inventory may also nest them.
    for group_name, group in inventory.items():
        keep_only(group or {}, group_name)
    directory = tmp_path / ("inventory-" + name)
    directory.mkdir()
    (directory / "inventory.yml").write_text(json.dumps(inventory))
    # molecule's group_vars live beside its inventory file.
    os.symlink(os.path.join(os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), "group_vars"), directory / "group_vars")
    return str(directory / "inventory.yml")


def assert_status_shows_the_lock(tmp_path, active, standby):
    """The status playbook: the ticking Beat holds the lock, the other stands
    by, and neither is a problem."""
    path = tmp_path / "fleet.json"
    result = run_site({"celery_status_json": str(path)}, playbook="celeryops.celery.status", check=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    beats = {name: host["beat"] for name, host in json.loads(path.read_text()).items()}
    assert (beats[active]["lock"], beats[standby]["lock"]) == ("held", "waiting"), beats
    assert all(beat["state"] == "running" for beat in beats.values()), beats
    lines = [line.strip(' "') for line in result.stdout.splitlines()]
    assert any(line.startswith(active + "  ") and "Beat runs here (holds the lock)" in line for line in lines), result.stdout[-3000:]
    assert any(line.startswith(standby + "  ") and "Beat runs here (stands by for the lock)" in line for line in lines), \
        result.stdout[-3000:]


def boot(name):
    docker("start", name)
    docker("exec", name, "timeout", "300", "systemctl", "is-system-running", "--wait", timeout=320, check=False)


def test_beat_on_two_hosts_ticks_once_and_fails_over_when_its_host_dies(tmp_path):
    assert sorted(n for n, c in hosts("systemd").items() if c.beat_pids()) == [SECOND], \
        "the setup of this check is wrong: Beat does not run on %s alone" % SECOND
    second = celery_host(SECOND, "systemd")
    second.probe("clear-published")
    start = time.time()
    # A play limited to the first host cannot stop the Beat without the lock
    # on the second: it refuses to start one with the lock beside it.
    limited = run_site({"celery_beat_hosts": [FIRST, SECOND], "celery_pip_packages": PACKAGES}, limit=FIRST,
                       callback="ansible.builtin.json")
    assert limited.returncode != 0, "the play limited to %s started Beat beside the one on %s" % (FIRST, SECOND)
    assert_failed_with(limited, ["Beat still runs on %s, outside this play and without the lock of celery_beat_hosts" % SECOND],
                       hosts_failed=(FIRST,))
    assert not celery_host(FIRST, "systemd").beat_pids()

    converge(celery_beat_hosts=[FIRST, SECOND], celery_pip_packages=PACKAGES)
    again = converge(celery_beat_hosts=[FIRST, SECOND], celery_pip_packages=PACKAGES).stdout
    assert recap_changed(again) == {FIRST: 0, SECOND: 0}, "the second site run changed something:\n" + again[-5000:]
    for name, celery in hosts("systemd").items():
        assert celery.beat_pids(), "Beat does not run on %s" % name
        unit = celery.sh("systemctl cat testapp-beat.service").stdout
        assert "celery_beat_lock" in unit and "redbeat.RedBeatScheduler" in unit, unit

    active = ticking_host(second)
    standby = ({FIRST, SECOND} - {active}).pop()
    assert_status_shows_the_lock(tmp_path, active, standby)

    # A switch of both hosts to supervisor: one Beat ticks throughout, and it
    # fails over under supervisor as under systemd.
    converge(celery_beat_hosts=[FIRST, SECOND], celery_pip_packages=PACKAGES, celery_process_manager="supervisor")
    for name, celery in hosts("supervisor").items():
        assert celery.beat_pids(), "Beat does not run on %s under supervisor" % name
        assert "celery_beat_lock" in celery.sh("cat /etc/supervisor/conf.d/testapp-beat.conf").stdout
    assert_never_twice(sent(second, start), INTERVAL, "through the switch to supervisor")
    second = celery_host(SECOND, "supervisor")
    active = ticking_host(second)
    standby = ({FIRST, SECOND} - {active}).pop()
    watcher = celery_host(standby, "supervisor")
    docker("kill", active)
    killed = time.time()
    try:
        taken = wait(lambda: next((at for at, host in sent(watcher, killed) if host == standby), None),
                     LOCK_TIMEOUT + 60, "a tick from %s after %s was killed" % (standby, active), 1)
        print("ticks from %s %.1f s after %s was killed (lock timeout %d s)" % (standby, taken - killed, active, LOCK_TIMEOUT))
        assert taken - killed <= LOCK_TIMEOUT + 10, \
            "%s took over %.1f s after %s died" % (standby, taken - killed, active)
    finally:
        boot(active)
    back = celery_host(active, "supervisor")
    wait(back.beat_pids, 120, "Beat to run again on %s" % active, 1)
    # The host that came back stands by: the ticks go on from the other.
    assert ticking_host(watcher, 20.0) == standby, "Beat moved back to %s when it came back" % active
    assert back.beat_pids(), "Beat does not stand by on %s" % active
    assert_never_twice(sent(watcher, start), INTERVAL, "from the site run into failover to the killed host's return")

    # Two inventories of the app, each with one of the hosts and its Beat:
    # the lock they share keeps one ticking.
    before = time.time()
    for name in (FIRST, SECOND):
        result = run_site({"celery_beat_hosts": [name], "celery_pip_packages": PACKAGES, "celery_flower_hosts": [SECOND],
                           "celery_process_manager": "supervisor"}, inventory=inventory_of(name, tmp_path))
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert all(c.beat_pids() for c in hosts("supervisor").values()), "Beat does not run on both hosts"
    ticking_host(second)
    assert_never_twice(sent(second, before), INTERVAL, "through the site runs of two inventories")

    # Back to one Beat, on the second host, and to systemd: the other host's
    # Beat goes first.
    before = time.time()
    converge(celery_beat_host=SECOND)
    second = celery_host(SECOND, "systemd")
    assert sorted(n for n, c in hosts("systemd").items() if c.beat_pids()) == [SECOND]
    assert not celery_host(FIRST, "systemd").host.file("/etc/systemd/system/testapp-beat.service").exists
    assert ticking_host(second) == SECOND
    assert_never_twice(sent(second, before), INTERVAL, "through the site run back to one Beat")
