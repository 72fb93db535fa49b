"""roles/watchdog/files/celery_watchdog.py: a worker that runs but stops
answering while the broker answers is restarted, warm first; nobody is
judged while the broker or the checker itself cannot ask, or while a
worker starts, stops or shuts down warm; pools that cannot answer inside a
task are restarted only when their main process is stopped."""
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "roles" / "watchdog" / "files" / "celery_watchdog.py"
SPEC = importlib.util.spec_from_file_location("celery_watchdog", SCRIPT)
celery_watchdog = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(celery_watchdog)

THRESHOLD = 45
WINDOW = 30


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Manager:
    """Workers by service: (running, pid, words); a kill ends the process
    and the manager starts a new one, as Restart=always does."""

    def __init__(self, services):
        self.services = services
        self.killed = []
        self.logs = {}

    def state(self, service):
        return self.services[service]

    def states(self, services):
        self.reads = getattr(self, "reads", 0) + 1
        return {service: self.state(service) for service in services}

    def kill_all(self, service, pid):
        self.killed.append((service, pid))

    def log_since_start(self, service, pid, node):
        return self.logs.get(service, "")


class Probe:
    def __init__(self):
        self.answer = {"reachable": True, "ping": [], "error": None}
        self.fail = None
        self.asked = []

    def ask(self, nodes):
        self.asked.append(nodes)
        if self.fail:
            raise celery_watchdog.ProbeFailed(self.fail)
        return self.answer


def worker(name, pool="prefork"):
    return {"name": name, "node": "%s@web1" % name, "service": "proj-worker-%s.service" % name, "pool": pool}


@pytest.fixture
def world(monkeypatch):
    """A watchdog over two workers, both running for an hour and answering."""
    clock = Clock()
    manager = Manager({"proj-worker-default.service": (True, 101, "active/running"),
                       "proj-worker-io.service": (True, 202, "active/running")})
    probe = Probe()
    probe.answer["ping"] = ["default@web1", "io@web1"]
    states = {101: "S", 202: "S"}
    signals = []

    def kill(pid, sig):
        signals.append((pid, sig))
    monkeypatch.setattr(celery_watchdog.os, "kill", kill)
    config = {"interval": 10, "threshold": THRESHOLD, "stop_window": WINDOW,
              "workers": [worker("default"), worker("io")]}
    dog = celery_watchdog.Watchdog(config, manager, probe, clock=clock, sleep=clock.sleep,
                                   state_of=states.get, age_of=lambda pid: 3600)

    class World:
        pass
    w = World()
    w.clock, w.manager, w.probe, w.states, w.signals, w.dog, w.config = clock, manager, probe, states, signals, dog, config

    def rounds(seconds):
        """Rounds every 10 s for `seconds`; the workers restarted."""
        restarted = []
        end = clock.now + seconds
        while clock.now < end:
            restarted += dog.round()
            clock.sleep(10)
        return restarted
    w.rounds = rounds
    return w


def silence(world, name):
    world.probe.answer["ping"] = [node for node in world.probe.answer["ping"] if not node.startswith(name + "@")]


def test_a_worker_that_answers_is_left_alone(world):
    assert world.rounds(600) == []
    assert world.signals == [] and world.manager.killed == []


def test_a_silent_worker_is_restarted_warm_then_killed_after_its_window(world):
    world.rounds(30)
    silence(world, "default")
    world.states[101] = "T"
    assert world.rounds(THRESHOLD - 10) == []
    assert world.rounds(20) == ["default"]
    assert world.signals == [(101, signal.SIGTERM), (101, signal.SIGCONT)]
    assert world.manager.killed == [("proj-worker-default.service", 101)]


def test_the_restart_comes_within_two_minutes_of_the_hang(world):
    world.rounds(30)
    silence(world, "default")
    hung = world.clock.now
    world.rounds(THRESHOLD + 20)
    assert world.manager.killed
    # Threshold, one interval, the stop window.
    assert world.clock.now - hung <= THRESHOLD + 10 + WINDOW + 30 < 120


def test_a_worker_that_ends_its_warm_shutdown_is_not_killed(world):
    silence(world, "default")
    world.rounds(THRESHOLD)

    asked = []

    def ended(service):
        """The hung process until the watchdog's signals, then its successor."""
        if service.endswith("io.service"):
            return True, 202, "active/running"
        asked.append(service)
        return (True, 101 if len(asked) == 1 else 303, "active/running")
    world.manager.state = ended
    assert world.dog.round() == ["default"]
    assert world.signals == [(101, signal.SIGTERM), (101, signal.SIGCONT)]
    assert world.manager.killed == []


def test_nobody_is_restarted_while_the_broker_does_not_answer_nor_right_after(world):
    world.probe.answer = {"reachable": False, "ping": [], "error": "OperationalError: connection refused"}
    assert world.rounds(600) == []
    world.probe.answer = {"reachable": True, "ping": [], "error": None}
    # The workers reconnect by themselves, waiting up to 30 s between two
    # attempts: that and a threshold's grace.
    assert world.rounds(THRESHOLD + 30 - 10) == []
    assert sorted(world.rounds(20)) == ["default", "io"]


def test_the_probe_failing_never_restarts_a_worker(world):
    silence(world, "default")
    world.probe.fail = "the probe ended with exit code 1"
    assert world.rounds(900) == []
    assert world.signals == [] and world.manager.killed == []
    world.probe.fail = None
    assert world.rounds(THRESHOLD - 10) == []


def test_a_worker_its_manager_stops_or_starts_is_left_alone(world):
    silence(world, "default")
    world.manager.services["proj-worker-default.service"] = (False, 0, "deactivating/stop-sigterm")
    assert world.rounds(900) == []
    world.manager.services["proj-worker-default.service"] = (True, 404, "active/running")
    world.dog.age_of = lambda pid: 5 if pid == 404 else 3600
    assert world.rounds(THRESHOLD) == []


def test_a_worker_that_began_a_warm_shutdown_is_left_alone(world):
    silence(world, "default")
    world.manager.logs["proj-worker-default.service"] = "[WARNING/MainProcess] worker: Warm shutdown (MainProcess)"
    assert world.rounds(900) == []
    assert world.signals == []


@pytest.mark.parametrize("pool", ["solo", "gevent", "eventlet"])
def test_a_pool_that_cannot_answer_inside_a_task_is_restarted_only_when_stopped(world, pool, capsys):
    world.config["workers"][0]["pool"] = pool
    silence(world, "default")
    world.states[101] = "S"
    assert world.rounds(900) == []
    # Said once for the whole silence, with the reason.
    spared = [line for line in capsys.readouterr().out.splitlines() if "leaving it alone" in line]
    assert len(spared) == 1 and "its pool (%s) cannot answer" % pool in spared[0], spared
    world.states[101] = "T"
    assert world.rounds(20) == ["default"]


def test_the_manager_failing_to_answer_judges_nobody(world):
    silence(world, "default")

    def broken(service):
        raise OSError("systemctl: not found")
    world.manager.state = broken
    assert world.rounds(900) == []


def test_systemd_state_reads_running_and_the_main_pid():
    def run(args):
        assert args[:2] == ["systemctl", "show"]
        return 0, "ActiveState=active\nSubState=running\nMainPID=812\n"
    assert celery_watchdog.Systemd(run).state("proj-worker-default.service") == (True, 812, "active/running")

    def stopping(args):
        return 0, "ActiveState=deactivating\nSubState=stop-sigterm\nMainPID=812\n"
    assert celery_watchdog.Systemd(stopping).state("x.service") == (False, 812, "deactivating/stop-sigterm")


def test_systemd_states_of_every_worker_in_one_call_in_the_order_asked():
    calls = []

    def run(args):
        calls.append(args)
        return 0, ("ActiveState=active\nSubState=running\nMainPID=812\n\n"
                   "ActiveState=inactive\nSubState=dead\nMainPID=0\n")
    states = celery_watchdog.Systemd(run).states(["a.service", "b.service"])
    assert states == {"a.service": (True, 812, "active/running"), "b.service": (False, 0, "inactive/dead")}
    assert len(calls) == 1 and calls[0][-2:] == ["a.service", "b.service"]

    def short(args):
        return 1, "ActiveState=active\nSubState=running\nMainPID=812\n"
    with pytest.raises(ValueError, match="answered 1 units of 2"):
        celery_watchdog.Systemd(short).states(["a.service", "b.service"])


def test_supervisor_states_of_every_program_in_one_call():
    def run(args):
        assert args[:2] == ["supervisorctl", "status"] and args[2:] == ["proj:a", "proj:b", "proj:c"]
        # supervisorctl exits 3 when a program is not running.
        return 3, ("proj:a   RUNNING   pid 77, uptime 0:10:00\n"
                   "proj:b   BACKOFF   Exited too quickly (process log may have details)\n"
                   "proj:c: ERROR (no such process)\n")
    states = celery_watchdog.Supervisor(run).states(["proj:a", "proj:b", "proj:c"])
    assert states == {"proj:a": (True, 77, "RUNNING"), "proj:b": (False, 0, "BACKOFF"), "proj:c": (False, 0, "ERROR")}


def test_a_round_reads_the_workers_states_once(world):
    world.rounds(60)
    assert world.manager.reads == 6


def test_supervisor_state_and_the_log_of_this_run_only():
    said = {"status": "proj:proj-worker-default   RUNNING   pid 77, uptime 0:10:00\n",
            "tail": "old run: worker: Warm shutdown (MainProcess)\n[...] default@web1 ready.\nnew run\n"}

    def run(args):
        return 0, said[args[1]]
    sv = celery_watchdog.Supervisor(run)
    assert sv.state("proj:proj-worker-default") == (True, 77, "RUNNING")
    assert "Warm shutdown" not in sv.log_since_start("proj:proj-worker-default", 77, "default@web1")
    said["status"] = "proj:proj-worker-default   STOPPING\n"
    assert sv.state("proj:proj-worker-default") == (False, 0, "STOPPING")


FAKE_PROBE = r"""
import json, sys
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["nodes"] == ["die@web1"]:
        sys.exit(3)
    print(json.dumps({"reachable": True, "ping": request["nodes"], "error": None}), flush=True)
"""


def test_the_probe_answers_line_by_line_and_is_started_again_after_it_ends_or_the_release_changes(tmp_path):
    started = []

    def popen(args, **kwargs):
        # As the app's user, with its environment and directory: then this stand-in instead of the app.
        assert args[:4] == ["runuser", "-u", "proj", "--"] and args[8:11] == [str(tmp_path / "current"), config["python"],
                                                                              config["probe"]]
        started.append(args)
        return subprocess.Popen([sys.executable, "-c", FAKE_PROBE], **kwargs)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "v1")
    config = {"app": "proj", "user": "proj", "env_file": "/etc/proj.env", "chdir": str(tmp_path / "current"),
              "python": "/srv/proj/.venv/bin/python", "probe": "/usr/local/libexec/celeryops/celery-watchdog-probe",
              "ping_timeout": 5, "startup_timeout": 30}
    probe = celery_watchdog.Probe(config, popen=popen)
    assert probe.ask(["default@web1"])["ping"] == ["default@web1"]
    assert probe.ask(["io@web1"])["ping"] == ["io@web1"]
    assert len(started) == 1
    with pytest.raises(celery_watchdog.ProbeFailed, match="exit code 3"):
        probe.ask(["die@web1"])
    assert probe.ask(["default@web1"])["ping"] == ["default@web1"] and len(started) == 2
    (tmp_path / "current").unlink()
    (tmp_path / "current").symlink_to(tmp_path / "v2")
    assert probe.ask(["default@web1"])["ping"] == ["default@web1"] and len(started) == 3
    probe.close()


def test_the_probe_that_hangs_is_a_failure_not_a_wait_and_leaves_no_process(tmp_path):
    started = []

    def popen(args, **kwargs):
        # As runuser does: the probe in a child of the process started.
        started.append(subprocess.Popen(["sh", "-c", "sleep 60; exit 0"], **kwargs))
        return started[-1]
    config = {"app": "proj", "user": "proj", "env_file": "/e", "chdir": str(tmp_path), "python": "/p", "probe": "/q",
              "ping_timeout": 1, "startup_timeout": 1}
    with pytest.raises(celery_watchdog.ProbeFailed, match="no answer within 1 s"):
        celery_watchdog.Probe(config, popen=popen).ask(["default@web1"])
    # SIGKILL is queued when killpg returns; a loaded machine may run the
    # grandchild once more before it dies.
    deadline = time.monotonic() + 10
    while live_in_group(started[0].pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_in_group(started[0].pid) == []


def live_in_group(pgid):
    """PIDs of the processes of a group that are not zombies (a killed
    grandchild waits for its new parent to reap it)."""
    live = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(entry))
    return live


def test_a_probe_that_answers_nonsense_is_a_failure_and_is_started_again(tmp_path):
    started = []

    def popen(args, **kwargs):
        started.append(args)
        code = "print('Django settings loaded', flush=True)" if len(started) == 1 else FAKE_PROBE
        return subprocess.Popen([sys.executable, "-c", code], **kwargs)
    config = {"app": "proj", "user": "proj", "env_file": "/e", "chdir": str(tmp_path), "python": "/p", "probe": "/q",
              "ping_timeout": 1, "startup_timeout": 5}
    probe = celery_watchdog.Probe(config, popen=popen)
    with pytest.raises(celery_watchdog.ProbeFailed, match="Django settings loaded"):
        probe.ask(["default@web1"])
    assert probe.ask(["default@web1"])["ping"] == ["default@web1"] and len(started) == 2
    probe.close()


def test_stopping_the_watchdog_ends_its_probe_at_once(tmp_path, monkeypatch):
    # Under supervisor the stop signal reaches the daemon's process group, not
    # the probe's session: the daemon must end the probe itself.
    closed = []

    class FakeProbe:
        def __init__(self, config):
            self.config = config

        def close(self, grace=2.0):
            closed.append((self.config["app"], grace))

    class StoppedWatchdog:
        def __init__(self, config, manager, probe):
            pass

        def run_forever(self):
            raise SystemExit(0)  # what the SIGTERM handler raises
    monkeypatch.setattr(celery_watchdog, "Probe", FakeProbe)
    monkeypatch.setattr(celery_watchdog, "Watchdog", StoppedWatchdog)
    monkeypatch.setattr(celery_watchdog.signal, "signal", lambda *_args: None)
    config = tmp_path / "watchdog.json"
    config.write_text('{"app": "proj", "manager": "supervisor", "workers": [{"node": "default@%h"}]}')
    with pytest.raises(SystemExit):
        celery_watchdog.main(["celery-watchdog", str(config)])
    # Without a grace: a release switch waits for this stop.
    assert closed == [("proj", 0)]


def test_a_probe_that_lingers_after_its_input_ends_is_killed_without_a_grace(tmp_path):
    # As the app's probe does: it answers, then takes seconds to exit once its
    # input ends (the broker connection's teardown).
    lingering = FAKE_PROBE + "import time\ntime.sleep(30)\n"
    started = []

    def popen(args, **kwargs):
        started.append(subprocess.Popen([sys.executable, "-c", lingering], **kwargs))
        return started[-1]
    config = {"app": "proj", "user": "proj", "env_file": "/e", "chdir": str(tmp_path), "python": "/p", "probe": "/q",
              "ping_timeout": 5, "startup_timeout": 30}
    probe = celery_watchdog.Probe(config, popen=popen)
    assert probe.ask(["default@web1"])["ping"] == ["default@web1"]
    began = time.monotonic()
    assert probe.close(grace=0) is None, "the lingering probe exited by itself"
    # The 30 s sleep, not a grace, would otherwise bound it; 10 s leaves room
    # for a loaded machine.
    assert time.monotonic() - began < 10
    assert started[0].poll() is not None
