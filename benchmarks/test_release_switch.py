"""Benchmark of release switches, run on the `release` scenario's fleet
(Debian 12 and 13 under systemd, Ubuntu 24.04 under supervisor, one Redis):

    make bench

1. One host, a steady stream (a task every 0.05 s to that host's own queue)
   and one 8 s task in flight when the switch starts: the plain manager
   restart against the release playbook's `restart` and `overlap` strategies -
   longest pause between two completed tasks, tasks lost, tasks run twice,
   switch wall time (for the playbook: its switch play, after the install).
2. The fleet: an `overlap` release on 1 host, on 3 hosts one at a time
   (serial 1) and on 3 hosts at once (serial 3), under the stream to every host.
3. How soon a stop notices that the process exited: the warm_shutdown module
   against `systemctl stop` and a one-second polling loop, on a process that
   takes exactly 1.5 s to exit after SIGTERM.

Writes the tables to $CELERYOPS_BENCH_OUT (default: .cache/benchmarks/release_switch.md)
and asserts only what makes the numbers meaningful (the switch succeeded).
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "molecule", "release", "tests"))

from release_checks import HOSTS, MANAGERS, REPO, Stream, make_release, probe, sh  # noqa: E402

OUT = os.environ.get("CELERYOPS_BENCH_OUT") or os.path.join(REPO, ".cache", "benchmarks", "release_switch.md")
ROWS = []
COUNTER = {"release": 1}


# The stream is published with release v1's virtualenv: keep every release.
KEEP = {"celery_releases_keep": 50}


def next_release(tmp_path):
    COUNTER["release"] += 1
    version = str(COUNTER["release"])
    return make_release(tmp_path, version), "b" + version


def release(on_switch, limit=None, **extra_vars):
    """The release playbook as a user runs it; calls on_switch() when its
    switch play starts (the install is done) and returns the seconds from
    then to the end, the switch's wall time."""
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "celeryops.celery.release",
           "-e", json.dumps(extra_vars)] + (["--limit", limit] if limit else [])
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    switch_start, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if switch_start is None and line.startswith("PLAY [Switch to the release]"):
            switch_start = time.monotonic()
            on_switch()
    assert proc.wait() == 0, "".join(lines)[-6000:]
    return time.monotonic() - switch_start


def timed(start, action):
    start()
    began = time.monotonic()
    action()
    return time.monotonic() - began


def plain_restart(host):
    if MANAGERS[host] == "systemd":
        sh(host, "systemctl restart testapp-worker-default.service", timeout=300)
    else:
        sh(host, "supervisorctl restart testapp:testapp-worker-default", timeout=300)


def measure(label, host_label, hosts, action, long_task_host=None):
    """action(start_long_task) switches and returns its wall time; it calls
    start_long_task() right before the switch, so that an 8 s task is in
    flight on the old workers when they are replaced."""
    long_task = {}

    def start_long_task():
        if long_task_host:
            long_task["id"] = probe(long_task_host, "send", "sleep", 8, "--queue", "host." + long_task_host)
            time.sleep(0.5)

    with Stream(hosts=hosts) as stream:
        wall = action(start_long_task)
    if long_task:
        done = probe(long_task_host, "wait", long_task["id"], "--timeout", 120)
        assert done["state"] == "SUCCESS", done
    row = {"switch": label, "hosts": host_label, "published": stream.published,
           "lost": len(stream.lost()), "run twice": len(stream.duplicated()),
           "longest pause (s)": round(stream.longest_pause(), 2), "wall time (s)": round(wall, 1)}
    ROWS.append(row)
    print(json.dumps(row))
    return row


def write_tables(latency_rows=()):
    lines = ["| switch | hosts | tasks | lost | run twice | longest pause (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        lines.append("| %s | %s | %d | %d | %d | %.2f | %.1f |" % (
            r["switch"], r["hosts"], r["published"], r["lost"], r["run twice"], r["longest pause (s)"], r["wall time (s)"]))
    if latency_rows:
        lines += ["", "| stop of a process that exits 1.5 s after SIGTERM | exit noticed after (ms), median | max (ms) |",
                  "|---|---|---|"]
        for name, values in latency_rows:
            lines.append("| %s | %.0f | %.0f |" % (name, statistics.median(values), max(values)))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def test_one_host_plain_restart_against_the_release_strategies(tmp_path):
    for host in (HOSTS[0], HOSTS[1]):
        manager = MANAGERS[host]
        measure("plain `%s restart`" % ("systemctl" if manager == "systemd" else "supervisorctl"),
                "1 (%s)" % manager, [host], lambda start: timed(start, lambda: plain_restart(host)), long_task_host=host)
        for strategy in ("restart", "overlap"):
            src, release_id = next_release(tmp_path)
            measure("release, strategy %s" % strategy, "1 (%s)" % manager, [host],
                    lambda start: release(start, limit=host, celery_release_src=src, celery_release_id=release_id,
                                          celery_release_strategy=strategy, **KEEP),
                    long_task_host=host)
    write_tables()
    assert all(r["lost"] == 0 for r in ROWS)


def test_fleet_overlap_release_by_batch_size(tmp_path):
    src, release_id = next_release(tmp_path)
    measure("release, overlap", "1 of 3", HOSTS,
            lambda start: release(start, limit=HOSTS[2], celery_release_src=src, celery_release_id=release_id, **KEEP))
    for serial in (1, 3):
        src, release_id = next_release(tmp_path)
        measure("release, overlap, serial %d" % serial, "3", HOSTS,
                lambda start: release(start, celery_release_src=src, celery_release_id=release_id,
                                      celery_release_serial=serial, **KEEP))
    write_tables()
    assert all(r["lost"] == 0 for r in ROWS)


# Not a multiple of the polling period, so that polling shows its real cost.
EXIT_AFTER = 1.5
SLOW_EXIT = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))\n"
             "time.sleep(3600)\n")


def _start_slow_exit(host):
    """A new transient unit whose process takes exactly 1 s to exit after
    SIGTERM; returns its name."""
    COUNTER["unit"] = COUNTER.get("unit", 0) + 1
    unit = "bench-exit-%d.service" % COUNTER["unit"]
    subprocess.run(["docker", "exec", "-i", host, "sh", "-c", "cat > /tmp/slow_exit.py"], input=SLOW_EXIT,
                   text=True, check=True)
    sh(host, "systemd-run --unit=%s --property=KillMode=mixed /usr/bin/python3 /tmp/slow_exit.py && sleep 0.5" % unit)
    return unit


def _module_latency(host):
    unit = _start_slow_exit(host)
    proc = subprocess.run(["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], host, "-o",
                           "-m", "celeryops.celery.warm_shutdown",
                           "-a", json.dumps({"manager": "systemd", "services": [unit], "timeout": 30})],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("=>", 1)[1])
    return (result["services"][0]["waited"] - EXIT_AFTER) * 1000


def _timed(host, script):
    unit = _start_slow_exit(host)
    out = sh(host, "s=$(date +%%s.%%N); %s; e=$(date +%%s.%%N); echo $s $e" % script.replace("UNIT", unit)).stdout.split()
    return (float(out[-1]) - float(out[-2]) - EXIT_AFTER) * 1000


def test_exit_detection_latency():
    host = HOSTS[0]
    rows = [
        ("warm_shutdown module", [_module_latency(host) for _trial in range(5)]),
        ("`systemctl stop` (blocking)", [_timed(host, "systemctl stop UNIT") for _trial in range(5)]),
        ("stop, then poll `systemctl is-active` every 1 s", [_timed(
            host, "systemctl stop --no-block UNIT; "
                  "while state=$(systemctl is-active UNIT); [ \"$state\" = active ] || [ \"$state\" = deactivating ]; do sleep 1; done")
            for _trial in range(5)]),
    ]
    for name, values in rows:
        print(name, [round(v) for v in values])
    write_tables(rows)
    assert statistics.median(rows[0][1]) < 250
