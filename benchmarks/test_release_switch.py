"""Benchmark of release switches, run on the `release` scenario's fleet
(Debian 12 under systemd and Ubuntu 24.04 under supervisor on RabbitMQ, Debian 13
under systemd on Redis):

    make bench

1. One host, a steady stream (a task every 0.05 s to that host's own queue)
   and one 8 s task in flight on the old workers when the switch starts
   (asserted: active on the old node within 3 s of the switch's start, and
   completed on the old release after its full 8 s): the plain manager
   restart against the release playbook's `restart` and `overlap` strategies -
   longest pause between two completed tasks of the switched host's queue,
   tasks lost, tasks run twice, switch wall time (for the playbook: its switch
   play, after the install).
2. The fleet: an `overlap` release on 1 host, on 3 hosts one at a time
   (serial 1) and on 3 hosts at once (serial 3), under the stream to every
   host; the pause is that of the switched hosts' own queues (the longest of
   them), never the fleet's, where the other hosts' completions fill the gap.
3. The install play of a release whose requirements are the running
   release's, on one host: a pip install (`celery_release_venv_reuse: false`)
   against the copy of the running release's virtualenv.
4. How soon a stop notices that the process exited: the warm_shutdown
   module's engine against `systemctl stop` and a one-second polling loop, on
   a process that takes exactly 1.5 s to exit after SIGTERM. Every row is
   timed the same way: on the host, from before its command starts to after it
   returns (`date +%s.%N` around it), minus the 1.5 s; the module's engine runs
   as a plain Python process there (its module_utils package, as the module runs
   it), so that no row includes Ansible's round trip and none starts its clock
   after the stop was sent.

The tests run in order in one session; the last one writes every table, from
this run only, to $CELERYOPS_BENCH_OUT (default:
.cache/benchmarks/release_switch.md). Asserts what makes the numbers
meaningful (the switch succeeded, the long task was in flight, all rows are
there).
"""
import json
import os
import statistics
import subprocess
import time

from release_checks import HOSTS, MANAGERS, REPO, Stream, active_ids, make_release, probe, sh, whoami

OUT = os.environ.get("CELERYOPS_BENCH_OUT") or os.path.join(REPO, ".cache", "benchmarks", "release_switch.md")
ROWS = []
# The last release's install play, in seconds; the install rows.
INSTALL = {"last": None, "rows": []}
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
    install_start, switch_start, lines = None, None, []
    for line in proc.stdout:
        lines.append(line)
        if install_start is None and line.startswith("PLAY [Install the release]"):
            install_start = time.monotonic()
        if switch_start is None and line.startswith("PLAY [Switch to the release]"):
            switch_start = time.monotonic()
            on_switch()
    assert proc.wait() == 0, "".join(lines)[-6000:]
    INSTALL["last"] = switch_start - install_start
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


def measure(label, host_label, hosts, action, long_task_host=None, switched=None):
    """action(start_long_task) switches and returns its wall time; it calls
    start_long_task() right as the switch starts, which sends an 8 s task and
    waits until the old workers (node default@<host>) run it. The pause is the
    longest of the switched hosts' own queues (default: all of `hosts`)."""
    long_task = {}
    old_version = whoami(long_task_host)["version"] if long_task_host else None

    def start_long_task():
        if long_task_host:
            began = time.monotonic()
            node = "default@" + long_task_host
            long_task["id"] = probe(long_task_host, "send", "sleep", 8, "--queue", "host." + long_task_host)
            while long_task["id"] not in active_ids(long_task_host, node, reply=2):
                assert time.monotonic() - began < 3, "the 8 s task did not start on %s within 3 s of the switch" % node
                time.sleep(0.1)

    with Stream(hosts=hosts) as stream:
        wall = action(start_long_task)
    if long_task_host:
        assert long_task, "the switch never started"
        done = probe(long_task_host, "wait", long_task["id"], "--timeout", 120)
        assert done["state"] == "SUCCESS", done
        assert done["result"]["version"] == old_version and done["result"]["slept"] >= 8, \
            "the 8 s task did not run to its end on the old release: %s" % done
    row = {"switch": label, "hosts": host_label, "published": stream.published,
           "lost": len(stream.lost()), "run twice": len(stream.duplicated()),
           "longest pause (s)": round(max(stream.longest_pause(h) for h in (switched or hosts)), 2),
           "wall time (s)": round(wall, 1)}
    ROWS.append(row)
    print(json.dumps(row))
    return row


def write_tables(latency_rows=()):
    lines = ["| switch | hosts | tasks | lost | run twice | longest pause (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        lines.append("| %s | %s | %d | %d | %d | %.2f | %.1f |" % (
            r["switch"], r["hosts"], r["published"], r["lost"], r["run twice"], r["longest pause (s)"], r["wall time (s)"]))
    if INSTALL["rows"]:
        lines += ["", "| install play of a release with the running release's requirements, 1 host | wall time (s) |",
                  "|---|---|"]
        lines += ["| %s | %.1f |" % row for row in INSTALL["rows"]]
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
            lambda start: release(start, limit=HOSTS[2], celery_release_src=src, celery_release_id=release_id, **KEEP),
            switched=[HOSTS[2]])
    for serial in (1, 3):
        src, release_id = next_release(tmp_path)
        measure("release, overlap, serial %d" % serial, "3", HOSTS,
                lambda start: release(start, celery_release_src=src, celery_release_id=release_id,
                                      celery_release_serial=serial, **KEEP))
    write_tables()
    assert all(r["lost"] == 0 for r in ROWS)


def test_install_of_a_release_with_the_running_release_requirements(tmp_path):
    """One host, the release's install play (unpack, virtualenv, checks): a
    pip install into a new virtualenv, the plain way, against the copy of the
    running release's virtualenv."""
    host = HOSTS[0]
    for label, reuse in (("pip install (`celery_release_venv_reuse: false`)", False),
                         ("copy of the running release's virtualenv (default)", True)):
        src, release_id = next_release(tmp_path)
        release(lambda: None, limit=host, celery_release_src=src, celery_release_id=release_id,
                celery_release_venv_reuse=reuse, **KEEP)
        assert whoami(host)["version"] == release_id.lstrip("b")
        INSTALL["rows"].append((label, INSTALL["last"]))
    write_tables()


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


# The module's engine with the module's defaults, as main() builds it, run
# from a copy of the collection's module_utils package on the host.
ENGINE = ("import os, subprocess, sys\n"
          "sys.path.insert(0, '/tmp/bench')\n"
          "from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown import engine, systemd, tracking\n"
          "def run(args):\n"
          "    p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, LC_ALL='C'))\n"
          "    return p.returncode, p.stdout, p.stderr\n"
          "ops = tracking.ProcessOps()\n"
          "shutdown = engine.WarmShutdown(systemd.SystemdManager(run, '/usr/bin/systemctl', ops), ops, timeout=30,\n"
          "                               on_timeout='fail', cold_timeout=30, poll_interval=0.05)\n"
          "shutdown.run(sys.argv[1:])\n")


def _timed(host, command):
    """Milliseconds from just before `command` (UNIT standing for a fresh
    slow-exit unit) starts on the host to just after it returns, minus the
    1.5 s the unit's process takes to exit: how late the command noticed the
    exit. Timed on the host with one clock for every row."""
    unit = _start_slow_exit(host)
    out = sh(host, "s=$(date +%%s.%%N); %s; e=$(date +%%s.%%N); echo \"$s $e\"" % command.replace("UNIT", unit),
             timeout=120).stdout.split()
    start, end = float(out[-2]), float(out[-1])
    return (end - start - EXIT_AFTER) * 1000


def _install_engine(host):
    packed = subprocess.run(["tar", "-C", REPO, "-cf", "-", "plugins/module_utils/_warm_shutdown"], capture_output=True,
                            check=True).stdout
    subprocess.run(["docker", "exec", "-i", host, "sh", "-c", "mkdir -p /tmp/bench/ansible_collections/celeryops/celery && "
                    "tar -C /tmp/bench/ansible_collections/celeryops/celery -xf -"], input=packed, check=True)
    subprocess.run(["docker", "exec", "-i", host, "sh", "-c", "cat > /tmp/bench/engine.py"], input=ENGINE, text=True, check=True)


def test_exit_detection_latency():
    host = HOSTS[0]
    _install_engine(host)
    rows = [
        ("warm_shutdown module (its engine)", [_timed(host, "python3 /tmp/bench/engine.py UNIT") for _trial in range(5)]),
        ("`systemctl stop` (blocking)", [_timed(host, "systemctl stop UNIT") for _trial in range(5)]),
        ("stop, then poll `systemctl is-active` every 1 s", [_timed(
            host, "systemctl stop --no-block UNIT; "
                  "while state=$(systemctl is-active UNIT); [ \"$state\" = active ] || [ \"$state\" = deactivating ]; do sleep 1; done")
            for _trial in range(5)]),
    ]
    for name, values in rows:
        print(name, [round(v) for v in values])
    # One run's tables, all of them: the switch rows of the tests above too.
    assert len(ROWS) == 9, "the switch tables of this run are incomplete (%d rows): run the whole file" % len(ROWS)
    write_tables(rows)
    assert statistics.median(rows[0][1]) < 250
