"""What the scenarios' checks share: a host seen through its process manager
and its broker, and the site playbook run the way a user runs it."""
import concurrent.futures
import contextlib
import json
import os
import re
import shlex
import subprocess
import time
import uuid


def run_site(extra_vars=None, check=False, inventory=None, playbook="celeryops.celery.site", limit=None,
             callback="ansible.builtin.default", diff=False, forks=None):
    """ansible-playbook against the scenario's hosts (or `inventory`: a path,
    or a list of them); returns the CompletedProcess. With
    callback="ansible.builtin.json", stdout is one JSON report (see failed_tasks)."""
    inventories = inventory if isinstance(inventory, list) else [inventory or os.environ["MOLECULE_INVENTORY_FILE"]]
    cmd = ["ansible-playbook"] + [arg for path in inventories for arg in ("-i", path)] + [
        playbook, "-e", json.dumps(extra_vars or {})]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if limit:
        cmd += ["--limit", limit]
    if forks:
        cmd += ["--forks", str(forks)]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK=callback)
    # A bound that only stops a hung run: a release on a loaded machine has
    # taken over 20 minutes.
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)


def run_status(hostname, report_dir, check=False, **extra_vars):
    """The status playbook on one host, as a user runs it (its table on the
    default callback's output), and the host's entry of the JSON report it
    wrote (None when it wrote none)."""
    path = os.path.join(str(report_dir), "status-%s.json" % uuid.uuid4().hex)
    result = run_site(dict(extra_vars, celery_status_json=path), playbook="celeryops.celery.status", limit=hostname,
                      check=check)
    report = None
    if os.path.exists(path):
        with open(path) as handle:
            report = json.load(handle).get(hostname)
    return result, report


def json_report(result):
    """The report of a run with the ansible.builtin.json callback (what other
    callbacks print around it, e.g. profile_tasks, is left aside)."""
    start = result.stdout.find("{")
    assert start >= 0, "no JSON report (rc %d):\n%s\n%s" % (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return json.JSONDecoder().raw_decode(result.stdout[start:])[0]


def failed_tasks(report):
    """[(task name, host, message)] of every failed task in a JSON report; a
    looped task's failed items each give their own message (ansible-core 2.21
    no longer marks a failed item `failed`: it carries the exception, and an
    assertion its `evaluated_to`)."""
    failed = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                if not (res.get("failed") or res.get("unreachable")):
                    continue
                messages = [str(res.get("msg", ""))]
                messages += [str(item.get("msg", "")) for item in res.get("results", [])
                             if item.get("failed") or "exception" in item or item.get("evaluated_to") is False]
                failed.append((task["task"]["name"], host, "\n".join(messages)))
    return failed


# The shared checks (roles common and app, dependencies of every role): they
# must run once per host and play, whichever entry point starts them.
SHARED_CHECKS = ("celeryops.celery.common : Check the app name", "celeryops.celery.app : Check and complete the worker list")


def shared_check_runs(report, name):
    """{(play, host): how many times the task `name` ran there} from a JSON report."""
    runs = {}
    for index, play in enumerate(report.get("plays", [])):
        for task in play.get("tasks", []):
            if task["task"]["name"] != name:
                continue
            for hostname, res in task.get("hosts", {}).items():
                if not res.get("skipped"):
                    runs[(index, hostname)] = runs.get((index, hostname), 0) + 1
    return runs


def recap(output):
    """{host: {"ok": n, "changed": n, ...}} from the PLAY RECAP of a default-callback run."""
    hosts = {}
    for match in re.finditer(r"^(\S+)\s+: ((?:\w+=\d+\s*)+)$", output, re.M):
        hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


def task_hosts(output, task, status):
    """Hosts a task reported `status` (changed, ok, skipping) on, in a
    default-callback run's output."""
    hosts = set()
    for block in output.split("\nTASK [")[1:]:
        if block.startswith(task + "]"):
            hosts.update(re.findall(r"^%s: \[([^\]]+)\]" % re.escape(status), block, re.M))
    return hosts


def changed_hosts(output, task):
    """Hosts a task reported changed on, in a default-callback run's output."""
    return task_hosts(output, task, "changed")


# A timed wait polls every TIMED_INTERVAL seconds. An untimed one starts
# there and polls less often the longer it waits, up to every
# SLOWEST_INTERVAL seconds: most predicates start a Celery command-line
# client (about 0.5 s of CPU), and a minute of waiting at a fixed half-second
# would spend a CPU's third on polling alone, taken from the checks that run
# beside it.
TIMED_INTERVAL, SLOWEST_INTERVAL = 0.5, 3.0


def assert_never_twice(ticks, interval, when):
    """No two of the (time, host) Beat ticks, in order, closer than half the
    schedule's interval: one Beat ticked, never two."""
    gaps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:])]
    assert not gaps or min(gaps) > interval / 2, "two ticks %.2f s apart %s: two Beats tick: %s" % (min(gaps), when, ticks)


def wait(predicate, timeout, what, interval=None):
    """Polls predicate until it returns something true; fails after timeout.
    A check that measures how long the wait took passes interval
    (TIMED_INTERVAL), so that the measure is as precise as that."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if interval is not None:
            time.sleep(interval)
        else:
            time.sleep(min(SLOWEST_INTERVAL, TIMED_INTERVAL + (time.monotonic() - started) / 15))
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def in_parallel(action, hosts):
    """action(host) on every host of a {name: CeleryHost} at once; {name: its return}."""
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(action, hosts.values())))


def while_held(action, begun, release, what, timeout=3600):
    """Runs action() (a restart, a stop, a play) in the background while a
    held task runs (the test app's hold(): it runs until its release file
    exists), and releases the task only once begun() is true (e.g. the
    worker's warm shutdown has begun) and action() still waits for it: however
    slow the machine, the task is in flight through what action() does.
    release() creates the release file. Returns what action() returned."""
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        running = background.submit(action)
        wait(lambda: running.done() or begun(), timeout, what)
        assert not running.done(), "it ended before %s: %s" % (what, _tail(running.result()))
        time.sleep(2)
        assert not running.done(), "it did not wait for the task in flight: %s" % (_tail(running.result()),)
        release()
        return running.result(timeout=timeout)


def _tail(result):
    if hasattr(result, "stdout") and isinstance(result.stdout, str):
        return (result.stdout + (result.stderr or ""))[-4000:]
    return result


def assert_held_task_ran_once(result, pool=None):
    """A held task's result (the probe's `wait`): it succeeded on its first
    delivery, after it was released, in one of the pool processes it was
    seen in; not killed and delivered again (acks_late and
    reject_on_worker_lost would hide that behind a SUCCESS)."""
    assert result["state"] == "SUCCESS", result
    done = result["result"]
    assert done["attempt"] == 1, "the task was delivered %d times: it was killed and redelivered" % done["attempt"]
    assert done["released"], "the task ended before it was released: %s" % done
    if pool is not None:
        assert done["pid"] in pool, "the task ran in %d, not in a pool process of the old worker %s" % (done["pid"], pool)
    return done


@contextlib.contextmanager
def outlive_the_redelivery_timeout(celery, start_worker, queue, timeout=900):
    """What celery_broker_redelivery_timeout guards against: two workers
    (start_worker(celery, name), each consuming `queue` alone, one task at a
    time) share the queue, one drains a held task past the broker's
    redelivery timeout, and the broker gives that task to the other one as
    well. Yields the task's id, the draining worker, the other one and the
    seconds from the drain's start until the other one ran the task, once the
    task is released and the other one has finished it; the workers are
    killed after the block."""
    names = ("drainer", "bystander")
    release = "/var/lib/%s/release-%s" % (celery.app, uuid.uuid4().hex)
    try:
        for name in names:
            start_worker(celery, name)
        task_id = celery.probe("send", "hold", release, "--queue", queue)
        running_on = celery.wait_for(
            lambda: next((n for n in names if any(t["id"] == task_id for t in celery.active(celery.node(n)))), None),
            60, "the held task to start")
        other = names[1] if running_on == names[0] else names[0]
        pid = celery.sh("pgrep -u %s -f -- '-n %s@'" % (celery.user, running_on)).stdout.split()[0]
        celery.sh("kill -TERM %s" % pid)
        started = time.monotonic()
        celery.wait_for(lambda: any(t["id"] == task_id for t in celery.active(celery.node(other))), timeout,
                        "the broker to give the task held by the draining worker to the other one", TIMED_INTERVAL)
        seconds = time.monotonic() - started
        celery.release(release)
        celery.wait_for(lambda: "hold[%s] succeeded" % task_id in celery.sh("cat /tmp/%s.log" % other).stdout, 60,
                        "the other worker to finish the task")
        yield task_id, running_on, other, seconds
    finally:
        celery.sh("pkill -KILL -u %s -f -- '-n (%s)@' || true" % (celery.user, "|".join(names)))
        celery.sh("rm -f %s" % release)


def task_attempts(celery, task_id):
    """How many times the test app's task started (its attempts counter)."""
    return tasks_attempts(celery, [task_id])[0]


def tasks_attempts(celery, task_ids):
    """task_attempts of each task, in one call on the host (0: not started)."""
    code = ("import json, sys; from celery_testapp.app import app; c = app.backend.client; "
            "print(json.dumps([int(c.get('celery_testapp:attempts:' + i) or 0) for i in sys.argv[1:]]))")
    out = celery.sh(celery.in_app(".venv/bin/python -c %s %s" % (shlex.quote(code), " ".join(task_ids)))).stdout
    return json.loads(out.strip().splitlines()[-1])


def redelivery_window_refusals(host, timeout):
    """The failed tasks' messages of a site run on host with
    celery_broker_redelivery_timeout set to timeout (below the scenarios'
    120 s celery_stop_timeout), which must fail before any change."""
    result = run_site({"celery_broker_redelivery_timeout": timeout}, limit=host.backend.get_hostname(),
                      callback="ansible.builtin.json")
    assert result.returncode != 0, "the site run passed with a redelivery timeout of %d s" % timeout
    return [failure[2] for failure in failed_tasks(json_report(result))]


# What the process manager says of a worker that has run since it started,
# never restarted: systemd's ActiveState and NRestarts (automatic restarts),
# supervisor's state.
RUNNING_WITHOUT_RESTART = (["ActiveState=active", "NRestarts=0"], ["RUNNING"])


def docker(*args, timeout=90, check=True):
    """A docker command on the machine that runs the scenario's containers
    (a broker stopped and started); its output."""
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout, check=check).stdout


# What a Beat process's command line holds (`celery ... beat ...`), and no
# worker's: how every check finds Beat, whichever manager runs it.
BEAT_PATTERN = " beat "


class ProcessWatch:
    """Counts the app's processes whose command line matches `pattern` on each
    host while a block runs, from a loop inside each container that samples
    every `interval` seconds and writes down when (the containers share the
    machine's clock). A docker exec costs about 0.09 s of CPU here, a pgrep in
    the container a few milliseconds: sampling from outside, as often, would
    take a third of a CPU from the checks beside it.

        with ProcessWatch(hosts, user, BEAT_PATTERN) as watch:
            <play>
        watch.assert_sampled(); watch.overlaps() == []"""

    def __init__(self, hosts, user, pattern, interval=0.2):
        self.hosts, self.user, self.pattern, self.interval = list(hosts), user, pattern, interval
        self.path = "/tmp/celeryops-watch-%s" % uuid.uuid4().hex[:12]
        self.samples, self.started, self.ended = {}, None, None

    def __enter__(self):
        # The loop removes the stop file as it ends: then its samples are complete.
        loop = ("while [ ! -e {p}.stop ]; do echo \"$(date +%s.%N) $(pgrep -c -u {user} -f -- {pattern})\"; sleep {i}; done"
                " > {p}.samples; rm -f {p}.stop").format(p=self.path, user=self.user, pattern=shlex.quote(self.pattern),
                                                         i=self.interval)
        for host in self.hosts:
            docker("exec", "-d", host, "sh", "-c", loop)
        for host in self.hosts:
            wait(lambda host=host: docker("exec", host, "cat", self.path + ".samples", check=False).strip(), 30,
                 "the process watch on %s to take its first sample" % host)
        self.started = time.time()
        return self

    def _last_sample(self, host):
        last = docker("exec", host, "tail", "-n", "1", self.path + ".samples", check=False).split()
        return float(last[0]) if len(last) == 2 else 0.0

    def __exit__(self, *exc):
        self.ended = time.time()
        for host in self.hosts:
            wait(lambda host=host: self._last_sample(host) > self.ended, 60,
                 "the process watch on %s to sample after the block" % host)
        for host in self.hosts:
            docker("exec", host, "touch", self.path + ".stop")
        for host in self.hosts:
            wait(lambda host=host: docker("exec", host, "sh", "-c", "test ! -e %s.stop && echo ended" % self.path, check=False).strip(),
                 60, "the process watch on %s to end" % host)
            out = docker("exec", host, "sh", "-c", "cat {p}.samples && rm -f {p}.samples".format(p=self.path))
            self.samples[host] = [(float(when), int(count)) for when, count in (line.split() for line in out.splitlines())]
        return False

    def spans(self, host):
        """The stretches in which the host ran at least one: (first, last) sample time."""
        found, start, last = [], None, None
        for when, count in self.samples.get(host, []):
            if count and start is None:
                start = when
            if not count and start is not None:
                found.append((start, last))
                start = None
            last = when
        if start is not None:
            found.append((start, last))
        return found

    def overlaps(self):
        """Two hosts sampled running one at the same time, or one host two at once."""
        found = [(host, when, count) for host in self.hosts for when, count in self.samples.get(host, []) if count > 1]
        for number, one in enumerate(self.hosts):
            for other in self.hosts[number + 1:]:
                found += [(one, a, other, b) for a in self.spans(one) for b in self.spans(other) if a[0] <= b[1] and b[0] <= a[1]]
        return found

    def counts_seen(self):
        """Every count a host's samples showed (0 while it ran none)."""
        return sorted({count for host in self.hosts for _when, count in self.samples.get(host, [])})

    def assert_sampled(self):
        """The watch covered the whole block, often enough, and saw what it
        watches run at least once: else it could not have seen two."""
        for host in self.hosts:
            times = [when for when, _count in self.samples[host]]
            assert len(times) > 10, "the process watch on %s sampled only %d times" % (host, len(times))
            assert times[0] <= self.started and times[-1] >= self.ended, (
                "the process watch on %s did not cover the block: samples %.1f..%.1f, block %.1f..%.1f"
                % (host, times[0], times[-1], self.started, self.ended))
            gaps = max(b - a for a, b in zip(times, times[1:]))
            assert gaps < 5, "the process watch on %s missed %.1fs" % (host, gaps)
        assert any(count for host in self.hosts for _when, count in self.samples[host]), (
            "the process watch never saw %r run: it could not see two" % self.pattern)


def answer_after_outage_bound(ping_seconds, ping_reply=5):
    """The longest a running worker may take to answer ping after its broker
    came back: Celery's connection retries wait up to 30 s apart (kombu's
    backoff), plus one failed and one good ping round trip as measured on the
    machine before the outage (a silent worker costs the ping its reply
    timeout, ping_reply s), plus 5 s for the connection attempt and the
    consumer's own start."""
    return 30 + 2 * ping_seconds + ping_reply + 5


def watchdog_log_script(app, manager, mark=(0, 0)):
    """The shell command that prints what the watchdog of `app` logged since
    a mark (CeleryHost.watchdog_mark; the default: since the host booted):
    its journal under systemd, its log file under supervisor."""
    since, size = mark
    if manager == "systemd":
        return "journalctl -q -o cat -u %s-watchdog.service --since=@%d" % (app, since)
    return "tail -c +%d /var/log/%s/watchdog.log" % (size + 1, app)


class CeleryHost:
    """One provisioned host, seen through its process manager and its broker."""

    def __init__(self, host, manager=None):
        self.host = host
        variables = host.ansible.get_variables()
        self.app = variables.get("celery_app_name", "celery")
        self.manager = manager or variables.get("celery_process_manager", "systemd")
        self.user = variables.get("celery_user", self.app)
        # Each worker's entry over celery_worker_defaults, as the roles read it.
        defaults = variables.get("celery_worker_defaults") or {}
        workers = [{**defaults, **w} for w in variables.get("celery_workers", [{"name": "default"}])]
        self.workers = [w["name"] for w in workers]
        # The queues each worker consumes (Celery's default queue when none).
        self.queues = {w["name"]: w.get("queues") or ["celery"] for w in workers}
        self.pools = {w["name"]: w.get("pool") or "prefork" for w in workers}
        self.app_dir = "/srv/%s/current" % self.app
        self.env_file = "/etc/%s/celery.env" % self.app
        self.hostname = host.check_output("hostname")

    # -- running things -------------------------------------------------
    def sh(self, script, check=True, timeout=None):
        cmd = self.host.run("sh -c %s" % shlex.quote(script))
        if check and cmd.rc != 0:
            raise AssertionError("%r failed (%d):\n%s\n%s" % (script, cmd.rc, cmd.stdout, cmd.stderr))
        return cmd

    def in_app(self, command):
        """Run a command the way the workers do: app dir, venv, env file."""
        return "cd %s && set -a && . %s && set +a && exec %s" % (self.app_dir, self.env_file, command)

    def probe(self, *args):
        out = self.sh(self.in_app(".venv/bin/python -m celery_testapp.probe " + " ".join(shlex.quote(str(a)) for a in args)))
        return json.loads(out.stdout.strip().splitlines()[-1]) if args[0] != "send" else out.stdout.strip()

    def ping(self, node, timeout=5):
        cmd = self.sh(self.in_app(".venv/bin/celery -A celery_testapp inspect ping -d %s --timeout %d --json" % (node, timeout)), check=False)
        return cmd.rc == 0 and node in cmd.stdout

    def ping_seconds(self, worker):
        """How long one ping round trip takes here now (the CLI's start-up is
        most of it): the baseline that bounds on a worker's answer after a
        fault are measured against."""
        def answered():
            started = time.monotonic()
            return self.ping(self.node(worker)) and time.monotonic() - started
        return wait(answered, 180, "%s to answer ping" % self.node(worker), TIMED_INTERVAL)

    def active(self, node):
        cmd = self.sh(self.in_app(".venv/bin/celery -A celery_testapp inspect active -d %s --timeout 5 --json" % node), check=False)
        if cmd.rc != 0:
            return []
        return json.loads(cmd.stdout.strip().splitlines()[-1]).get(node, [])

    @staticmethod
    def wait_for(predicate, timeout, what, interval=None):
        return wait(predicate, timeout, what, interval)

    # -- a task held in flight (see while_held) ---------------------------
    def hold(self, worker, timeout=120, queue=None, green=False, time_limit=None):
        """Sends hold() to this host (to `queue`, else the default queue; with
        its own hard `time_limit`, over the worker's) and waits until the
        worker runs it. Returns (task id, the processes that may run it at
        that moment: the pool processes, or the main process of a green pool,
        the file that releases it)."""
        node = self.node(worker)
        wait(lambda: self.ping(node), 60, "ping of %s" % node)
        release = "/var/lib/%s/release-%s" % (self.app, uuid.uuid4().hex)
        task_id = self.probe("send", "hold", release, *(["--queue", queue] if queue else []),
                             *(["--time-limit", time_limit] if time_limit else []))
        wait(lambda: any(t["id"] == task_id for t in self.active(node)), timeout, "the held task to start on %s" % node)
        if green:
            # gevent and eventlet run every task in the worker's own process.
            return task_id, [self.main_pid(worker)], release
        pool = self.children(self.main_pid(worker))
        assert pool, "no pool process under %s" % self.main_pid(worker)
        return task_id, pool, release

    def restart_while_held(self, worker, queue=None, green=False, time_limit=None):
        """Restarts the worker through its manager while a held task runs on
        it, released only once the warm shutdown has begun and the restart
        still waits (see while_held): however slow the machine, the task is in
        flight through the warm shutdown. Returns the task's result, the
        processes it may have run in, the old main PID and the worker's log
        since the hold."""
        since = int(self.sh("date +%s").stdout)
        log_offset = self.log_size(worker)
        task_id, pool, release = self.hold(worker, queue=queue, green=green, time_limit=time_limit)
        old_pid = self.main_pid(worker)
        while_held(lambda: self.restart(worker),
                   lambda: "Warm shutdown" in self.log_since(worker, since, offset=log_offset),
                   lambda: self.release(release), "the warm shutdown of %s to begin" % self.node(worker), timeout=300)
        self.sh("rm -f %s" % release)
        result = self.probe("wait", task_id, "--timeout", "120")
        return result, pool, old_pid, self.log_since(worker, since, offset=log_offset)

    def release(self, release_file, check=True):
        self.sh("touch %s && chmod 0644 %s" % (release_file, release_file), check=check)

    def start_up_seconds(self, worker):
        """A clean stop and start of the worker through its manager, timed
        until it answers ping: the baseline that the bounds of a SIGKILL's or
        a reboot's recovery are measured against, on this machine, now."""
        node = self.node(worker)
        self.control("stop", worker)
        started = time.monotonic()
        self.control("start", worker)
        wait(lambda: self.ping(node), 300, "ping of %s after its start" % node, TIMED_INTERVAL)
        return time.monotonic() - started

    # -- the process manager --------------------------------------------
    def service(self, worker):
        if self.manager == "systemd":
            return "%s-worker-%s.service" % (self.app, worker)
        return "%s:%s-worker-%s" % (self.app, self.app, worker)

    def node(self, worker):
        return "%s@%s" % (worker, self.hostname)

    def main_pid(self, worker):
        if self.manager == "systemd":
            out = self.sh("systemctl show -p MainPID --value %s" % self.service(worker)).stdout.strip()
        else:
            out = self.sh("supervisorctl pid %s" % self.service(worker), check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def manager_state(self, worker):
        """systemd: ActiveState and NRestarts; supervisor: the program's
        state (see RUNNING_WITHOUT_RESTART)."""
        if self.manager == "systemd":
            return sorted(self.sh("systemctl show -p ActiveState -p NRestarts %s" % self.service(worker)).stdout.split())
        return self.sh("supervisorctl status %s" % self.service(worker), check=False).stdout.split()[1:2]

    def control(self, action, worker, timeout=120):
        """systemctl or supervisorctl `action` (stop, start ...) of the
        worker, given up after timeout seconds."""
        manager = "systemctl" if self.manager == "systemd" else "supervisorctl"
        return self.sh("timeout %d %s %s %s" % (timeout, manager, action, self.service(worker)))

    def restart(self, worker):
        if self.manager == "systemd":
            return self.sh("systemctl restart %s" % self.service(worker))
        return self.sh("supervisorctl restart %s" % self.service(worker))

    def children(self, pid):
        out = self.sh("ps -o pid= --ppid %d" % pid, check=False).stdout.split()
        return [int(p) for p in out]

    def log_file(self, worker):
        return "/var/log/%s/worker-%s.log" % (self.app, worker)

    def log_size(self, worker):
        """Bytes in the worker's log file under supervisor (0 under systemd)."""
        if self.manager == "systemd":
            return 0
        return int(self.sh("stat -c %%s %s" % self.log_file(worker)).stdout)

    def log_since(self, worker, since, offset=0):
        """The worker's log since a time (systemd's journal) or from a byte
        offset of its log file (supervisor, see log_size)."""
        if self.manager == "systemd":
            return self.sh("journalctl -q -o cat -u %s --since=@%d" % (self.service(worker), since)).stdout
        return self.sh("tail -c +%d %s" % (offset + 1, self.log_file(worker))).stdout

    # -- the watchdog (celery_watchdog_enabled) ---------------------------
    def watchdog_mark(self):
        """Where the watchdog's log ends now (see watchdog_log)."""
        since = int(self.sh("date +%s").stdout)
        size = self.sh("stat -c %%s /var/log/%s/watchdog.log 2>/dev/null || echo 0" % self.app).stdout.strip()
        return since, int(size)

    def watchdog_log(self, mark):
        """What the watchdog logged since a watchdog_mark."""
        # supervisor's log file is missing until the watchdog first writes.
        return self.sh(watchdog_log_script(self.app, self.manager, mark), check=self.manager == "systemd").stdout

    # -- Beat -------------------------------------------------------------
    def beat_pids(self):
        """PIDs of Beat processes of the app, whatever runs them."""
        out = self.sh("pgrep -u %s -f -- %s || true" % (self.user, shlex.quote(BEAT_PATTERN))).stdout.split()
        return [int(p) for p in out]
