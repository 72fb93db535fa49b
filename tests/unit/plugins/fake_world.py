# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one fake process world of the warm_shutdown unit tests.

Both the module's tests (tests/unit/plugins/modules) and the engine's
(tests/unit/plugins/module_utils) drive the code through it, so that a
process, a signal or a "systemctl stop" behaves the same in both: processes
that live in a dict, a clock that moves only when the code sleeps, cgroups,
and systemctl and supervisorctl that act on those processes the way systemd
and supervisord do. FAKE_WORKER is its counterpart with real processes, for
the smoke tests (started by the real_workers fixture in conftest.py).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import signal
import subprocess
import textwrap

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.procfs import ProcFS, ProcStat
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.systemd import SystemdManager
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.tracking import ProcessOps


class FakeProc:
    def __init__(self, pid, ppid, starttime, on_term=None, on_quit=None):
        self.pid = pid
        self.ppid = ppid
        self.starttime = starttime
        self.state = 'S'
        self.on_term = on_term
        self.on_quit = on_quit


class FakeWorld(ProcFS):
    """Processes that live in a dict, a clock that moves only when the code sleeps.

    signals records every signal delivered, whoever sent it: the code under
    test, or a fake systemctl or supervisorctl standing in for the manager.
    """

    def __init__(self):
        super(FakeWorld, self).__init__(proc_root='/nonexistent', cgroup_root='/nonexistent')
        self.now = 1000.0
        self.procs = {}
        self.events = []
        self.signals = []
        self.cgroups = {}
        self.unkillable = set()
        self.next_start = 5000

    # -- processes
    def spawn(self, pid, ppid=1, cgroup=None, on_term=None, on_quit=None):
        self.next_start += 1
        self.procs[pid] = FakeProc(pid, ppid, self.next_start, on_term, on_quit)
        if cgroup:
            self.cgroups.setdefault(cgroup, set()).add(pid)
        return self.procs[pid]

    def worker(self, main, children, task_seconds, cgroup=None, quit_exits=True):
        """A Celery-like prefork worker: SIGTERM to main = warm shutdown (children finish, then main exits)."""

        def on_term():
            def finish():
                for c in children:
                    self.exit(c)
                self.at(0.1, lambda: self.exit(main))
            self.at(task_seconds, finish)

        def on_quit():
            if quit_exits:
                def finish():
                    for c in children:
                        self.exit(c)
                    self.exit(main)
                self.at(0.5, finish)

        self.spawn(main, 1, cgroup, on_term=on_term, on_quit=on_quit)
        for c in children:
            self.spawn(c, main, cgroup)

    def exit(self, pid):
        proc = self.procs.pop(pid, None)
        for pids in self.cgroups.values():
            pids.discard(pid)
        if proc is not None:
            for other in self.procs.values():
                if other.ppid == pid:
                    other.ppid = 1

    def at(self, delay, fn):
        self.events.append((self.now + delay, fn))

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now = round(self.now + seconds, 6)
        due = [e for e in self.events if e[0] <= self.now]
        self.events = [e for e in self.events if e[0] > self.now]
        for dummy, fn in sorted(due, key=lambda e: e[0]):
            fn()

    def kill(self, pid, sig):
        self.signals.append((pid, sig))
        proc = self.procs.get(pid)
        if proc is None:
            raise OSError(errno.ESRCH, 'No such process')
        if sig == signal.SIGKILL:
            if pid not in self.unkillable:
                self.exit(pid)
        elif sig == signal.SIGTERM:
            if proc.on_term:
                proc.on_term()
            else:
                self.exit(pid)
        elif sig == signal.SIGQUIT:
            if proc.on_quit:
                proc.on_quit()

    # -- ProcFS interface
    def stat(self, pid):
        proc = self.procs.get(pid)
        if proc is None:
            return None
        return ProcStat(pid, proc.ppid, proc.state, proc.starttime)

    def pids(self):
        return list(self.procs)

    def find_cgroup(self, control_group):
        return control_group if control_group in self.cgroups else None

    def cgroup_pids(self, path):
        return set(self.cgroups.get(path, ()))

    def ops(self):
        return ProcessOps(procfs=self, kill=self.kill, sleep=self.sleep, use_pidfd=False)


# --------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------

def unit(main, cgroup=None, **props):
    """The properties of a systemd unit whose main process is main (0: none)."""
    d = dict(MainPID=str(main), ControlGroup=cgroup or '')
    d.update(props)
    return d


class FakeSystemctl:
    """systemctl as run_command runs it: 'show' reports the units, 'stop' sends what systemd would."""

    def __init__(self, world, units=None, path='/bin/systemctl'):
        self.world = world
        self.units = {} if units is None else units  # name -> dict of properties (see unit())
        self.path = path
        self.calls = []
        self.call_kwargs = []
        self.stop_rc = 0
        # Whether "show" of an unknown unit fills in LoadError (as systemd does since it has
        # the property); without it the engine can only quote LoadState.
        self.load_error = True

    def __call__(self, args, **kwargs):
        self.calls.append(list(args))
        self.call_kwargs.append(kwargs)
        assert args[0] == self.path
        if args[1] == 'show':
            name = args[2]
            assert args[3::2] == ['-p'] * len(SystemdManager.PROPERTIES)
            props = self.units.get(name)
            if props is None:
                out = 'Id=%s\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n' % name
                if self.load_error:
                    out += 'LoadError=org.freedesktop.systemd1.NoSuchUnit "Unit %s not found."\n' % name
                return 0, out, ''
            base = dict(Id=name, LoadState='loaded', ActiveState='active', SubState='running',
                        KillMode='mixed', KillSignal='15', TimeoutStopUSec='infinity', ControlGroup='', MainPID='0')
            base.update(props)
            return 0, ''.join('%s=%s\n' % kv for kv in base.items()), ''
        if args[1] == 'stop':
            assert args[2] == '--no-block'
            if self.stop_rc:
                return self.stop_rc, '', 'Failed to stop %s: Access denied\n' % args[3]
            props = self.units.get(args[3], {})
            main = int(props.get('MainPID', 0))
            if main and props.get('KillMode', 'mixed') in ('mixed', 'process', 'none') and main in self.world.procs:
                self.world.kill(main, signal.SIGTERM)   # SIGTERM to the main process only
            return 0, '', ''
        raise AssertionError('unexpected systemctl call %r' % (args,))

    def stops(self):
        return [c[3] for c in self.calls if c[1] == 'stop']


# --------------------------------------------------------------------------
# supervisor
# --------------------------------------------------------------------------

class FakeStopClient:
    """A background "supervisorctl stop": it returns once supervisord has seen the program's process exit."""

    def __init__(self, world, pid, args, **kwargs):
        self.world = world
        self.pid = pid
        self.args = args
        self.kwargs = kwargs
        self.returncode = None
        self.killed = False
        assert kwargs['stdin'] == subprocess.DEVNULL

    def communicate(self, timeout=None):
        if self.killed:
            self.returncode = -9
            return b'', None
        if self.pid in self.world.procs:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = 0
        return ('%s: stopped\n' % self.args[-1]).encode(), None

    def kill(self):
        self.killed = True


class FakeSupervisorctl:
    """supervisorctl as seen through run_command, plus the background 'stop' through popen."""

    def __init__(self, world, programs=None, path='/usr/bin/supervisorctl'):
        self.world = world
        self.programs = {} if programs is None else programs   # name -> dict(state=..., pid=...)
        self.path = path
        self.calls = []
        self.call_kwargs = []
        self.popens = []

    def __call__(self, args, **kwargs):
        self.calls.append(list(args))
        self.call_kwargs.append(kwargs)
        assert args[0] == self.path
        cmd, name = args[-2], args[-1]
        prog = self.programs.get(name)
        if cmd == 'status':
            if prog is None:
                return 4, '%s: ERROR (no such process)\n' % name, ''
            return 0, '%-33s%-10spid %s, uptime 1:00:00\n' % (name, prog['state'], prog['pid']), ''
        if cmd == 'pid':
            if prog is None:
                return 1, 'No such process %s\n' % name, ''
            return 0, '%s\n' % prog['pid'], ''
        if cmd == 'stop':
            if prog and prog.get('restarts'):
                prog['state'] = 'STARTING'
            elif prog and prog['state'] == 'BACKOFF':
                prog['state'] = 'STOPPED'
            return 0, '%s: ERROR (not running)\n' % name, ''
        raise AssertionError(args)

    def popen(self, args, **kwargs):
        assert args[0] == self.path
        assert args[-2] == 'stop'
        assert kwargs['env']['LC_ALL'] == 'C'
        prog = self.programs[args[-1]]
        prog['state'] = 'STOPPING'
        self.world.kill(prog['pid'], signal.SIGTERM)   # stopsignal=TERM, stopasgroup=false
        p = FakeStopClient(self.world, prog['pid'], args, **kwargs)
        self.popens.append(p)
        return p


# --------------------------------------------------------------------------
# Real processes
# --------------------------------------------------------------------------

# A Celery-like prefork worker as a real process tree, run as
#   python -c FAKE_WORKER TASK_SECONDS QUIT_MODE LATE_SECONDS GO_FILE
# It prints "ready" once its two children (one with a grandchild) run their
# task; SIGTERM is a warm shutdown (with LATE_SECONDS, a child spawned during
# it lives that long), SIGQUIT a cold one (QUIT_MODE cold) or ignored.
FAKE_WORKER = textwrap.dedent('''
    import os, signal, sys, time

    task, quit_mode, late, go = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    children = []

    def run_task():
        # The task's time runs from the stop (whatever stops the worker
        # creates the go file just before its SIGTERM): however slow the
        # machine is to start the workers, their tasks are in flight when
        # the stop comes.
        while not os.path.exists(go):
            time.sleep(0.005)
        time.sleep(task)

    r, w = os.pipe()
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            # like a prefork pool child: SIGTERM is back to its default action
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            if i == 0 and os.fork() == 0:
                os.write(w, b'%8d' % os.getpid())
                run_task()              # a grandchild (a subprocess of a task)
                os._exit(0)
            run_task()                  # "the task in flight"
            os._exit(0)
        children.append(pid)
    grandchild = int(os.read(r, 8))

    def warm(signum, frame):
        if late and os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(late)            # a child spawned during the shutdown
            os._exit(0)
        for c in children:
            os.waitpid(c, 0)
        os._exit(0)

    def cold(signum, frame):
        for c in children + [grandchild]:
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
        for c in children:
            os.waitpid(c, 0)
        os._exit(3)

    signal.signal(signal.SIGTERM, warm)
    signal.signal(signal.SIGQUIT, cold if quit_mode == 'cold' else signal.SIG_IGN)
    sys.stdout.write('ready\\n')
    sys.stdout.flush()
    while True:
        time.sleep(60)
''')
