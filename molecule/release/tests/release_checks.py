"""What the release checks share: the fleet seen through `docker exec`, a
steady stream of tasks, and the release and rollback playbooks run the way a
user runs them."""
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time

from celery_checks import BEAT_PATTERN, ProcessWatch, run_site, watchdog_log_script

APP = "testapp"
HOSTS = ["rl-debian-12", "rl-ubuntu-2404", "rl-debian-13"]
MANAGERS = {"rl-debian-12": "systemd", "rl-ubuntu-2404": "supervisor", "rl-debian-13": "systemd"}
# The broker of each host's queues (molecule.yml): RabbitMQ under both
# managers, Redis for the third. Results of all three go to the Redis.
BROKERS = {"rl-debian-12": "rabbitmq", "rl-ubuntu-2404": "rabbitmq", "rl-debian-13": "redis"}
BEAT_HOST = HOSTS[0]
ROOT = "/srv/%s" % APP
ENV_FILE = "/etc/%s/celery.env" % APP
REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def sh(host, script, check=True, timeout=120):
    proc = subprocess.run(["docker", "exec", host, "sh", "-c", script], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("%s: %r failed (%d):\n%s\n%s" % (host, script, proc.returncode, proc.stdout, proc.stderr))
    return proc


def in_release(release, command):
    """A command run like the workers run: release dir, its venv, the env file."""
    return "cd %s/releases/%s && set -a && . %s && set +a && exec .venv/bin/python %s" % (ROOT, release, ENV_FILE, command)


def probe(host, *args, release="v1", timeout=120):
    out = sh(host, in_release(release, "-m celery_testapp.probe " + " ".join(shlex.quote(str(a)) for a in args)),
             timeout=timeout).stdout.strip()
    return json.loads(out.splitlines()[-1]) if args[0] not in ("send",) else out.splitlines()[-1]


def active_ids(host, node, reply=5):
    """Ids of the tasks the node runs now (empty when it does not answer
    within `reply` seconds)."""
    out = sh(host, in_release("v1", "-m celery -A celery_testapp inspect active -d %s --timeout %d --json" % (node, reply)),
             check=False).stdout.strip().splitlines()
    try:
        return [task["id"] for task in json.loads(out[-1]).get(node, [])]
    except (IndexError, ValueError, AttributeError):
        return []


VENV_COPY_TASK = "Copy the running release's virtualenv when the dependencies are the same"
REQUIREMENTS_TASK = "Install the app's requirements into the virtualenv"
# The restart strategy's stop of the workers (roles/release/tasks/restart_workers.yml).
DRAIN_TASK = "Drain the workers (warm shutdown)"


def task_results(report, name):
    """{host: result} of the task of that name in a JSON report (where a
    role's task is named "<role> : <name>"): its last run on each host that
    was not skipped, else the skip (a task file included twice, as the worker
    role's virtualenv tasks are in a release, gives the name twice)."""
    found = {}
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"].split(" : ")[-1] == name:
                for host, result in task.get("hosts", {}).items():
                    if host not in found or found[host].get("skipped") or not result.get("skipped"):
                        found[host] = result
    return found


def venv_copied(report, host):
    """What the release install said about copying the running virtualenv."""
    result = task_results(report, VENV_COPY_TASK).get(host)
    assert result is not None and "stdout" in result, "%s: no result of %r: %s" % (host, VENV_COPY_TASK, result)
    return json.loads(result["stdout"])


def assert_own_copy(host, release, source):
    """releases/<release>/.venv is a copy of <source>/.venv (not the same
    directory, not a link), its scripts name its own path, and it runs."""
    new, old = "%s/releases/%s/.venv" % (ROOT, release), "%s/.venv" % source
    inodes = sh(host, "stat -c %%i %s %s" % (old, new)).stdout.split()
    assert len(inodes) == 2 and inodes[0] != inodes[1], "%s: %s is %s" % (host, new, old)
    assert sh(host, "test ! -L %s" % new, check=False).returncode == 0, "%s: %s is a link" % (host, new)
    shebang = sh(host, "head -n1 %s/bin/celery" % new).stdout.strip()
    assert shebang in ("#!%s/bin/python" % new, "#!%s/bin/python3" % new), "%s: %s" % (host, shebang)
    left = sh(host, "grep -rlF %s %s/bin %s/pyvenv.cfg" % (old, new, new), check=False).stdout.strip()
    assert left == "", "%s: files of %s still name %s: %s" % (host, new, old, left)
    assert sh(host, "cmp %s/.celeryops-dependencies %s/.celeryops-dependencies" % (old, new), check=False).returncode == 0
    assert sh(host, "%s/bin/celery --version" % new).stdout.strip().startswith("5.")


def whoami(host, release="v1"):
    """The release that runs a task published to this host's own queue."""
    return probe(host, "call", "whoami", "--queue", "host." + host, "--timeout", 60, release=release)["result"]


def make_release(tmp_path, version, broken=False, archive=False, broken_on=None, bad_requirement=False,
                 extra_requirement=None):
    """A copy of the test app whose tasks report `version`; with archive, a
    .tar.gz of it with one top-level directory, as release tarballs have.
    broken: the app fails to import; broken_on: only on that host;
    bad_requirement: requirements.txt names a path that holds no package, so
    pip fails (at once, without asking an index); extra_requirement: a line
    added to requirements.txt."""
    dest = tmp_path / ("release-" + version)
    shutil.copytree(os.path.join(REPO, "tests", "testapp"), dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "celery_testapp" / "VERSION").write_text(version + "\n")
    if broken:
        app = dest / "celery_testapp" / "app.py"
        app.write_text("import celery_testapp_module_that_does_not_exist  # noqa: F401\n" + app.read_text())
    if broken_on:
        app = dest / "celery_testapp" / "app.py"
        app.write_text("import socket\nif socket.gethostname() == %r:\n"
                       "    import celery_testapp_module_that_does_not_exist  # noqa: F401\n" % broken_on + app.read_text())
    if bad_requirement:
        with open(str(dest / "requirements.txt"), "a") as handle:
            handle.write("./vendor/no-such-package\n")
    if extra_requirement:
        with open(str(dest / "requirements.txt"), "a") as handle:
            handle.write(extra_requirement + "\n")
    if archive:
        path = str(tmp_path / ("testapp-%s.tar.gz" % version))
        with tarfile.open(path, "w:gz") as tar:
            tar.add(str(dest), arcname="testapp-%s" % version)
        return path
    return str(dest)


def playbook(name, limit=None, callback="ansible.builtin.default", **extra_vars):
    return run_site(extra_vars, playbook="celeryops.celery." + name, limit=limit, callback=callback)


def ok(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def link(host, name):
    return sh(host, "readlink %s/%s || true" % (ROOT, name)).stdout.strip()


def app_process_cwds(host):
    """Working directory of every process of the app user: the release it runs."""
    script = ("for p in $(pgrep -u %s); do printf '%%s %%s %%s\\n' $p $(readlink /proc/$p/cwd) "
              "\"$(tr '\\0' ' ' < /proc/$p/cmdline | cut -c1-120)\"; done" % APP)
    lines = sh(host, script, check=False).stdout.strip().splitlines()
    return [line.split(" ", 2) for line in lines if line.strip()]


def handover_left(host):
    return sh(host, "ls /etc/systemd/system/%s-handover-* /etc/supervisor/conf.d/%s-handover.conf 2>/dev/null || true"
              % (APP, APP)).stdout.strip()


def beat_count(host):
    out = sh(host, "pgrep -u %s -f -- %s || true" % (APP, shlex.quote(BEAT_PATTERN)), check=False).stdout.split()
    return len(out)


def watchdog_log(host):
    """Everything the host's watchdog logged since the fleet booted."""
    return sh(host, watchdog_log_script(APP, MANAGERS[host]), check=False).stdout


def worker_log_tail(host, lines=60):
    """The last lines the host's workers logged: the journal under systemd,
    the log directory's files under supervisor."""
    if MANAGERS[host] == "systemd":
        script = "journalctl -q --no-pager -o short-precise -n %d -u '%s-worker*'" % (lines, APP)
    else:
        script = "tail -q -n %d /var/log/%s/*worker*.log" % (lines, APP)
    return sh(host, script, check=False).stdout


class Stream:
    """record(seq) tasks published to the hosts' own queues, while the sampler
    counts Beat processes. A host's queue lives on its broker, so each broker
    has a producer of its own that publishes to its hosts' queues in turn, in a range
    of sequence numbers of its own. Each queue gets a task every
    `interval` x len(hosts) seconds, as from one producer over all of them;
    every execution lands in the one result backend the fleet shares."""

    SEQ_RANGE = 1000000

    def __init__(self, hosts=None, interval=0.05):
        hosts = hosts or HOSTS
        self.hosts = hosts
        # The last host of each broker publishes, with release v1's
        # virtualenv: none of them is the first host, the only one whose v1
        # a check prunes.
        self.producers = []
        for number, broker in enumerate(sorted({BROKERS[h] for h in hosts})):
            served = [h for h in hosts if BROKERS[h] == broker]
            self.producers.append({"host": served[-1], "queues": ["host." + h for h in served],
                                   "first_seq": number * self.SEQ_RANGE,
                                   "interval": interval * len(hosts) / len(served)})
        self.stop_file = "/tmp/stream.stop"
        # Beat processes on every host of the fleet, through the stream.
        self.beat = ProcessWatch(HOSTS, APP, BEAT_PATTERN)

    def __enter__(self):
        probe(self.producers[0]["host"], "clear-records")
        for producer in self.producers:
            sh(producer["host"], "rm -f %s /tmp/stream.out" % self.stop_file)
        for producer in self.producers:
            queues = " ".join("--queue " + q for q in producer["queues"])
            subprocess.run(["docker", "exec", "-d", producer["host"], "sh", "-c", in_release(
                "v1", "-m celery_testapp.probe stream %s --interval %s --first-seq %d --stop-file %s > /tmp/stream.out 2>&1"
                % (queues, producer["interval"], producer["first_seq"], self.stop_file))], check=True)
        self.beat.__enter__()
        time.sleep(3)
        return self

    def __exit__(self, *exc):
        time.sleep(3)
        for producer in self.producers:
            sh(producer["host"], "touch %s" % self.stop_file)
        self.beat.__exit__(*exc)
        for producer in self.producers:
            host = producer["host"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not sh(host, "cat /tmp/stream.out", check=False).stdout.strip():
                time.sleep(0.5)
            out = sh(host, "cat /tmp/stream.out").stdout.strip().splitlines()
            producer["published"] = json.loads(out[-1])["published"]
        self.published = sum(producer["published"] for producer in self.producers)
        # Every task published is executed within a minute, or it was lost.
        deadline = time.monotonic() + 60
        while True:
            self.records = probe(self.producers[0]["host"], "records")
            if len(self.records) >= self.published or time.monotonic() > deadline:
                break
            time.sleep(1)
        return False

    # -- what the stream saw -------------------------------------------
    def lost(self):
        expected = set()
        for producer in self.producers:
            expected.update(range(producer["first_seq"], producer["first_seq"] + producer["published"]))
        return sorted(expected - {r["seq"] for r in self.records})

    def duplicated(self):
        seen = {}
        for r in self.records:
            seen[r["seq"]] = seen.get(r["seq"], 0) + 1
        return sorted(s for s, n in seen.items() if n > 1)

    @staticmethod
    def _longest_gap(times):
        times = sorted(times)
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def longest_pause(self, host=None):
        """Longest time between two completed tasks (of one host's queue)."""
        if host is None:
            return self._longest_gap([r["at"] for r in self.records])
        producer = next(p for p in self.producers if "host." + host in p["queues"])
        first, queues = producer["first_seq"], producer["queues"]
        turn = queues.index("host." + host)
        return self._longest_gap([r["at"] for r in self.records
                                  if first <= r["seq"] < first + self.SEQ_RANGE and (r["seq"] - first) % len(queues) == turn])

    def versions(self):
        return sorted({r["version"] for r in self.records})

    def assert_nothing_lost_and_nothing_run_twice_but_at_a_stop(self):
        """No task lost. A task runs twice only the way Celery's acks_late
        allows at a warm shutdown (celery/celery#3796, #3802): its first run
        ended on a worker process the switch stopped, in the instant of its
        shutdown, when the acknowledgement was still queued and the broker
        delivered the task again. So each task runs at most twice, its first
        run's process is gone, and there are no more such tasks than hosts
        (seen once in all the runs here)."""
        assert self.lost() == [], self.summary()
        runs = {}
        for record in self.records:
            runs.setdefault(record["seq"], []).append(record)
        twice = {seq: sorted(found, key=lambda r: r["at"]) for seq, found in runs.items() if len(found) > 1}
        assert len(twice) <= len(self.hosts), ("more tasks ran twice than hosts switched", twice, self.summary())
        for seq, found in twice.items():
            first = found[0]
            assert len(found) == 2, ("task %d ran %d times" % (seq, len(found)), found)
            alive = sh(first["hostname"], "kill -0 %d" % first["pid"], check=False).returncode == 0
            assert not alive, ("task %d ran twice, its first run on a process that still runs" % seq, found)
        if twice:
            print("ran twice, the first run on a worker stopped in the switch: %s" % json.dumps(twice))

    def summary(self):
        return {"published": self.published, "executed": len(self.records), "lost": len(self.lost()),
                "duplicated": len(self.duplicated()),
                "longest_pause": round(self.longest_pause(), 3),
                "longest_pause_per_host": {h: round(self.longest_pause(h), 3) for h in self.hosts},
                "beat_processes_seen": self.beat.counts_seen(), "beat_overlaps": self.beat.overlaps()[:3],
                # Which producer's tasks a loss is of, and whether it is a
                # producer's last: that one is published just as it exits.
                "producers": [{"host": p["host"], "first_seq": p["first_seq"], "published": p["published"]}
                              for p in self.producers],
                "lost_seqs": self.lost()[:10]}
