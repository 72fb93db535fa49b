# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine: stop services through their manager (a layer from systemd.py
or supervisor.py) and wait for every tracked process, escalating per
on_timeout when the warm-shutdown window ends.

Nothing here talks to AnsibleModule: the managers take a
``run_command(args) -> (rc, stdout, stderr)`` callable and the engine takes a
clock, so unit tests drive all of it."""

import signal
import time

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import WarmShutdownError, format_pids, format_seconds

ON_TIMEOUT_CHOICES = ('fail', 'cold', 'kill')

OUTCOME_WARM = 'warm'
OUTCOME_COLD = 'cold'
OUTCOME_KILLED = 'killed'
OUTCOME_ALREADY_STOPPED = 'already_stopped'
OUTCOME_WOULD_STOP = 'would_stop'
OUTCOME_TIMEOUT = 'timeout'

PHASE_WARM = 'warm'
PHASE_COLD = 'cold'
PHASE_KILL = 'kill'
_PHASE_OUTCOME = {PHASE_WARM: OUTCOME_WARM, PHASE_COLD: OUTCOME_COLD, PHASE_KILL: OUTCOME_KILLED}

# How long processes may take to disappear after SIGKILL before we give up.
KILL_GRACE = 10.0

# Processes found through the /proc tree (no cgroup) are rescanned at most this often.
TREE_RESCAN_INTERVAL = 0.5

# Upper bound for poll_interval: an exit must be noticed within 0.25 s.
MAX_POLL_INTERVAL = 0.25
MIN_POLL_INTERVAL = 0.005


class Service:
    """One service (systemd unit or supervisor program) and what happened to it."""

    def __init__(self, name):
        self.name = name
        self.state = 'unknown'
        self.main_pid = None
        self.main = None
        self.tracked = {}
        self.processes_at_start = []
        self.running = False
        self.props = {}
        self.handle = None          # manager specific: background "supervisorctl stop"
        self.cgroup_path = None     # systemd: the cgroup directory being watched
        self.phase = None
        self.deadline = None
        self.started = None
        self.outcome = None
        self.waited = 0.0
        self.remaining = []
        self.done = False
        self.error = None           # a failure that is not about remaining processes
        self.last_scan = None

    def add(self, ops, pid):
        """Track a PID seen for this service; returns the TrackedProcess if it is new and alive."""
        if pid in self.tracked:
            old = self.tracked[pid]
            if not old.exited:
                return None
            # The PID was reused by a new process in the same cgroup/tree: track the new one too.
        proc = ops.track(pid)
        if proc is None:
            return None
        self.tracked[pid] = proc
        return proc

    def alive(self, ops):
        return [p for p in self.tracked.values() if ops.is_alive(p)]

    def main_alive(self, ops):
        return self.main is not None and ops.is_alive(self.main)

    def finish(self, now, outcome, remaining=()):
        self.outcome = outcome
        self.waited = round(max(0.0, now - self.started), 3) if self.started is not None else 0.0
        self.remaining = sorted(remaining)
        self.done = True

    def result(self):
        return {
            'name': self.name,
            'main_pid': self.main_pid,
            'processes_at_start': list(self.processes_at_start),
            'waited': self.waited,
            'outcome': self.outcome,
            'remaining': list(self.remaining),
        }


def _dedupe(names):
    seen = set()
    result = []
    for name in names:
        if name not in seen:
            seen.add(name)
            result.append(name)
    return result


class WarmShutdown:
    """Stop services through their manager and wait for every process, escalating per on_timeout."""

    def __init__(self, manager, ops, timeout=600, on_timeout='fail', cold_timeout=30, poll_interval=0.05,
                 clock=None, kill_grace=KILL_GRACE, warn=None):
        validate_settings(timeout, on_timeout, cold_timeout, poll_interval)
        self.manager = manager
        self.ops = ops
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.cold_timeout = cold_timeout
        self.poll_interval = poll_interval
        self.clock = clock or time.monotonic
        self.kill_grace = kill_grace
        self.warn = warn or (lambda msg: None)

    def discover(self, names):
        normalized = _dedupe([self.manager.normalize(n) for n in names])
        return [self.manager.discover(n) for n in normalized]

    def run(self, names, check_mode=False):
        start = self.clock()
        services = []
        changed = False
        try:
            if not names:
                raise WarmShutdownError('services must name at least one service')
            services = self.discover(names)
            # Every check happens before anything is sent to any service.
            for svc in services:
                self.manager.validate(svc)
            changed = any(svc.running for svc in services)
            if check_mode:
                for svc in services:
                    svc.outcome = OUTCOME_WOULD_STOP if svc.running else OUTCOME_ALREADY_STOPPED
                return self._result(services, changed, start)
            for svc in services:
                for msg in self.manager.warnings(svc, self.timeout):
                    self.warn(msg)
            self._stop_and_wait(services)
            for svc in services:
                if not svc.running:
                    svc.error = self.manager.verify_stopped(svc)
        except WarmShutdownError as e:
            e.services = [svc.result() for svc in services]
            e.changed = changed or e.changed
            raise
        finally:
            for svc in services:
                for proc in svc.tracked.values():
                    self.ops.release(proc)

        failed = [svc for svc in services if svc.remaining or svc.error]
        if failed:
            raise WarmShutdownError(' '.join(self._failure_message(svc) for svc in failed),
                                    services=[svc.result() for svc in services], changed=changed)
        return self._result(services, changed, start)

    def _result(self, services, changed, start):
        return {
            'changed': changed,
            'services': [svc.result() for svc in services],
            'elapsed': round(self.clock() - start, 3),
        }

    def _stop_and_wait(self, services):
        running = [svc for svc in services if svc.running]
        try:
            for svc in services:
                self.manager.stop(svc)
                if not svc.running:
                    svc.finish(self.clock(), OUTCOME_ALREADY_STOPPED)
            self.wait(running)
        finally:
            for svc in services:
                for msg in self.manager.finish(svc):
                    self.warn(msg)

    def wait(self, services):
        """Wait for all services in one loop (total time = the longest, not the sum)."""
        now = self.clock()
        active = []
        for svc in services:
            svc.started = now
            svc.phase = PHASE_WARM
            svc.deadline = now + self.timeout
            active.append(svc)
        while active:
            for svc in list(active):
                self._refresh(svc)
                alive = svc.alive(self.ops)
                now = self.clock()
                if not alive:
                    svc.finish(now, _PHASE_OUTCOME[svc.phase])
                elif now >= svc.deadline:
                    self._escalate(svc, alive, now)
                if svc.done:
                    active.remove(svc)
            if not active:
                break
            next_deadline = min(svc.deadline for svc in active)
            pause = min(self.poll_interval, max(0.0, next_deadline - self.clock()))
            procs = [p for svc in active for p in svc.tracked.values() if not p.exited]
            self.ops.wait(pause, procs)

    def _refresh(self, svc, force=False):
        """Track processes that appeared since the start (late-spawned children).

        A cgroup is re-read at every poll; a /proc tree walk (which reads every
        process's stat) at most every TREE_RESCAN_INTERVAL, and always before SIGKILL.
        """
        now = self.clock()
        if (svc.cgroup_path is None and not force and svc.last_scan is not None
                and now - svc.last_scan < TREE_RESCAN_INTERVAL):
            return
        svc.last_scan = now
        for pid in sorted(self.manager.current_pids(svc)):
            proc = svc.add(self.ops, pid)
            if proc is not None and svc.phase == PHASE_KILL:
                self.ops.signal(proc, signal.SIGKILL)

    def _escalate(self, svc, alive, now):
        try:
            self._escalate_step(svc, alive, now)
        except WarmShutdownError as e:
            raise WarmShutdownError('%s (%s, escalating after %s): %s'
                                    % (svc.name, svc.state, format_seconds(round(now - svc.started, 3)), e.msg))

    def _escalate_step(self, svc, alive, now):
        if svc.phase == PHASE_WARM:
            if self.on_timeout == 'fail':
                svc.finish(now, OUTCOME_TIMEOUT, [p.pid for p in alive])
                return
            if self.on_timeout == 'cold' and svc.main_alive(self.ops):
                self.ops.signal(svc.main, signal.SIGQUIT)
                svc.phase = PHASE_COLD
                svc.deadline = now + self.cold_timeout
                return
            self._kill_all(svc, now)
        elif svc.phase == PHASE_COLD:
            self._kill_all(svc, now)
        else:
            svc.finish(now, OUTCOME_KILLED, [p.pid for p in alive])

    def _kill_all(self, svc, now):
        self._refresh(svc, force=True)
        # The main process first, so it cannot fork replacements for the children being killed.
        ordered = sorted(svc.alive(self.ops), key=lambda p: (p is not svc.main, p.pid))
        for proc in ordered:
            self.ops.signal(proc, signal.SIGKILL)
        svc.phase = PHASE_KILL
        svc.deadline = now + self.kill_grace

    def _failure_message(self, svc):
        if svc.error and not svc.remaining:
            return svc.error
        main = ' (main PID %d)' % svc.main_pid if svc.main_pid and svc.main_pid in svc.remaining else ''
        if svc.outcome == OUTCOME_TIMEOUT:
            return ('%s: the warm shutdown did not finish within timeout=%ds (waited %ss); PIDs still alive: %s%s. '
                    'They were left running: %s. To give the tasks more time raise timeout (and the manager\'s stop '
                    'timeout); to bound the wait use on_timeout=cold (Celery cold shutdown with SIGQUIT, then SIGKILL '
                    'after cold_timeout) or on_timeout=kill.'
                    % (svc.name, self.timeout, svc.waited, format_pids(svc.remaining), main,
                       self.manager.left_running_note(svc)))
        return ('%s: PIDs %s%s still exist %s after SIGKILL (waited %ss in all); they may be stuck in uninterruptible '
                'sleep (check "ps -o pid,stat,wchan -p %s"). Not reporting the service as stopped while processes '
                'remain.' % (svc.name, format_pids(svc.remaining), main, format_seconds(self.kill_grace), svc.waited,
                             ','.join(str(p) for p in svc.remaining)))


def validate_settings(timeout, on_timeout, cold_timeout, poll_interval):
    """Check the numeric options; raises WarmShutdownError naming the option."""
    if timeout is None or timeout < 1:
        raise WarmShutdownError('timeout must be at least 1 (seconds), got %s' % (timeout,))
    if cold_timeout is None or cold_timeout < 1:
        raise WarmShutdownError('cold_timeout must be at least 1 (seconds), got %s' % (cold_timeout,))
    if on_timeout not in ON_TIMEOUT_CHOICES:
        raise WarmShutdownError('on_timeout must be one of %s, got %s' % (', '.join(ON_TIMEOUT_CHOICES), on_timeout))
    if poll_interval is None or not (MIN_POLL_INTERVAL <= poll_interval <= MAX_POLL_INTERVAL):
        raise WarmShutdownError('poll_interval must be between %s and %s seconds (an exit must be noticed within '
                                '%ss), got %s' % (MIN_POLL_INTERVAL, MAX_POLL_INTERVAL, MAX_POLL_INTERVAL, poll_interval))
