# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restarts a Celery worker whose main process runs but no longer answers.

Runs as root beside the workers of one app, under the process manager that
runs them, with the host's own Python (the standard library only). Every
`interval` seconds it reads every worker's state from its manager (one call) and asks
the workers for ping through a probe (celery_watchdog_probe.py): a process
that runs as the app's user, with the app's Python, environment and working
directory, imports the app once and answers one request per line. The
daemon never imports the app.

A worker is restarted when, for `threshold` seconds in a row, its manager
says it runs, the broker answers the probe, and the worker does not answer
ping; for pools whose main process cannot answer while a task runs (solo,
and gevent or eventlet inside a task that never yields) only when its main
process is also stopped (state T): nothing else tells such a worker inside a
long task from a hung one. The restart is warm first: SIGTERM and SIGCONT to
the main process, so that a worker that wakes up finishes its tasks; then,
if the same process still runs after `stop_window` seconds, SIGKILL to all
of its processes, and the manager starts it again (Restart=always,
autorestart=true).

What it leaves alone, by design:
- a worker its manager is starting or stopping (a warm shutdown, a release
  switch), or whose main process started less than `threshold` seconds ago;
- every worker while the broker does not answer, and for `threshold` + 30
  seconds after it answers again (the workers reconnect by themselves,
  waiting up to 30 s between two attempts);
- every worker while the probe itself fails: the checker's failure is never
  a reason to stop a worker;
- a worker whose log says it began a warm shutdown (SIGTERM sent outside
  its manager), looked up just before a restart.

Usage: celery_watchdog.py CONFIG.json   (written by the celeryops.celery.watchdog role)
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

C_LOCALE = {'LANG': 'C', 'LC_ALL': 'C', 'LC_MESSAGES': 'C'}

# Pools whose main process answers ping while every pool slot runs a task.
ANSWERS_WHILE_BUSY = ('prefork', 'threads')

# The longest wait between two of a worker's attempts to reconnect to the
# broker (kombu's interval_max, which Celery's consumer keeps).
RECONNECT_BACKOFF = 30

# How Celery's worker logs the start of its warm shutdown.
WARM_SHUTDOWN = 'Warm shutdown'


def log(message):
    print('celery-watchdog: %s' % message, flush=True)


class ProbeFailed(Exception):
    """The probe could not be started or did not answer: nobody was asked."""


class Probe:
    """The long-lived asking process, started again whenever it fails or
    the app's directory points at another release."""

    def __init__(self, config, popen=subprocess.Popen):
        self.config = config
        self.popen = popen
        self.proc = None
        self.release = None

    def _release(self):
        return os.path.realpath(self.config['chdir'])

    def _start(self):
        c = self.config
        args = json.dumps({'app': c['app'], 'broker_use_ssl': c.get('broker_use_ssl')})
        self.proc = self.popen(
            ['runuser', '-u', c['user'], '--', 'sh', '-c', 'set -a; . "$0"; set +a; cd "$1" && shift && exec "$@"',
             c['env_file'], c['chdir'], c['python'], c['probe'], args],
            # Its stderr is the daemon's: what the app logs while imported shows in the watchdog's log.
            # A process group of its own: runuser runs the probe in a child, and close() ends both.
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        self.release = self._release()
        self._read(c['startup_timeout'])

    def _read(self, timeout):
        ready, _w, _x = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ''
        if not line:
            code = self.close()
            raise ProbeFailed('the probe ended with exit code %s' % code if ready else 'the probe gave no answer within %s s' % timeout)
        try:
            return json.loads(line)
        except ValueError:
            self.close()
            raise ProbeFailed('the probe answered %r' % line[:200])

    def ask(self, nodes):
        if self.proc is not None and (self.proc.poll() is not None or self._release() != self.release):
            self.close()
        if self.proc is None:
            self._start()
        timeout = self.config['ping_timeout']
        try:
            self.proc.stdin.write(json.dumps({'nodes': nodes, 'timeout': timeout}) + '\n')
            self.proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise ProbeFailed(str(exc))
        # Connecting and asking each take up to `timeout`.
        return self._read(3 * timeout + 5)

    def close(self, grace=2.0):
        """End the probe (its end of input first, then, after `grace` seconds,
        SIGKILL to its process group); its exit code, None when it had to be
        killed."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        proc.stdout.close()
        return code


class Systemd:
    """Worker states from `systemctl show`; signals to the unit's processes."""

    def __init__(self, run):
        self.run = run

    def states(self, services):
        """{service: (running, main PID, the manager's words)} of every
        service, read in one call: one block per unit, in the order asked."""
        rc, out = self.run(['systemctl', 'show', '-p', 'ActiveState', '-p', 'SubState', '-p', 'MainPID'] + list(services))
        blocks = [block for block in out.split('\n\n') if '=' in block]
        if len(blocks) != len(services):
            raise ValueError('systemctl show answered %d units of %d (exit %d)' % (len(blocks), len(services), rc))
        found = {}
        for service, block in zip(services, blocks):
            fields = dict(line.split('=', 1) for line in block.splitlines() if '=' in line)
            pid = int(fields.get('MainPID') or 0)
            words = '%s/%s' % (fields.get('ActiveState'), fields.get('SubState'))
            found[service] = (words == 'active/running' and pid > 0, pid, words)
        return found

    def state(self, service):
        """(running, main PID, the manager's words)."""
        return self.states([service])[service]

    def kill_all(self, service, pid):
        self.run(['systemctl', 'kill', '--signal=SIGKILL', service])

    def log_since_start(self, service, pid, node):
        rc, out = self.run(['journalctl', '-q', '-o', 'cat', '_PID=%d' % pid, '-n', '2000'])
        return out


class Supervisor:
    """Worker states from `supervisorctl status`; signals to the program's
    process group (supervisord starts each program in a group of its own)."""

    def __init__(self, run):
        self.run = run
        self.base = ['supervisorctl']

    def states(self, services):
        """{service: (running, main PID, the manager's words)} of every
        program, read in one call (it exits non-zero when one is not
        running): a line per program, named first."""
        _rc, out = self.run(self.base + ['status'] + list(services))
        found = {}
        for line in out.splitlines():
            words = line.split()
            if len(words) < 2 or words[0].rstrip(':') not in services:
                continue
            state = words[1]
            pid = int(words[3].rstrip(',')) if state == 'RUNNING' and len(words) > 3 and words[2] == 'pid' else 0
            found[words[0].rstrip(':')] = (state == 'RUNNING' and pid > 0, pid, state)
        return found

    def state(self, service):
        found = self.states([service])
        if service not in found:
            raise ValueError('supervisorctl status says nothing of %s' % service)
        return found[service]

    def kill_all(self, service, pid):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_since_start(self, service, pid, node):
        # The log file holds the program's earlier runs too: what follows the
        # last "<node> ready." is this run's.
        rc, out = self.run(self.base + ['tail', '-65536', service])
        mark = out.rfind('%s ready.' % node)
        return out[mark:] if mark >= 0 else out


def stat_fields(pid, proc_root='/proc'):
    """The fields of /proc/<pid>/stat after the command name (which may hold
    blanks and parentheses), from the state on; [] when there is no such process."""
    try:
        with open('%s/%d/stat' % (proc_root, pid)) as stat:
            text = stat.read()
    except OSError:
        return []
    return text[text.rfind(')') + 1:].split()


def proc_state(pid, proc_root='/proc'):
    """The state letter of the process, or None when there is no such process."""
    fields = stat_fields(pid, proc_root)
    return fields[0] if fields else None


def proc_age(pid, proc_root='/proc'):
    """Seconds since the process started, or None."""
    fields = stat_fields(pid, proc_root)
    try:
        with open('%s/uptime' % proc_root) as uptime:
            up = float(uptime.read().split()[0])
        return up - int(fields[19]) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return None


class Watchdog:
    """One round every `interval` seconds; `alive` holds, per worker, when it
    last counted as alive (answered, started, stopped, or could not be asked)."""

    def __init__(self, config, manager, probe, clock=time.monotonic, sleep=time.sleep,
                 state_of=proc_state, age_of=proc_age):
        self.config = config
        self.manager = manager
        self.probe = probe
        self.clock = clock
        self.sleep = sleep
        self.state_of = state_of
        self.age_of = age_of
        self.alive = {}
        self.pids = {}
        self.broker_down = False
        self.probe_down = False
        # Silent workers of pools that cannot answer inside a task, left
        # alone: each is logged once per silence, not every round.
        self.left_alone = set()

    def round(self):
        """Check every worker once; returns the names of the workers restarted."""
        now = self.clock()
        threshold = self.config['threshold']
        running = {}
        # One call for every worker: under supervisor each call is a Python
        # client's start-up, a CPU's fifth of a second.
        services = [worker['service'] for worker in self.config['workers']]
        try:
            states = self.manager.states(services)
        except Exception as exc:  # the checker's own failure: nobody is judged
            log('could not read the state of %s: %s' % (', '.join(services), exc))
            states = None
        for worker in self.config['workers']:
            name = worker['name']
            # A worker its manager says nothing of (supervisord away, say) is
            # not running for this round: its silence is not counted.
            up, pid, words = (states or {}).get(worker['service'], (False, 0, 'unknown'))
            age = self.age_of(pid) if up else None
            if not up or pid != self.pids.get(name) or age is None or age < threshold:
                self.alive[name] = now
            self.pids[name] = pid if up else None
            if up:
                running[name] = (worker, pid)
        if not running:
            return []
        try:
            answer = self.probe.ask([worker['node'] for worker, _pid in running.values()])
        except (ProbeFailed, ValueError, OSError) as exc:
            if not self.probe_down:
                log('the probe could not ask the workers (%s); judging nobody until it can' % exc)
            self.probe_down = True
            self.spare(running, now)
            return []
        if self.probe_down:
            log('the probe asks the workers again')
            self.probe_down = False
        if not answer.get('reachable'):
            if not self.broker_down:
                log('the broker does not answer (%s); judging nobody until %d s after it answers again'
                    % (answer.get('error'), threshold + RECONNECT_BACKOFF))
            self.broker_down = True
            self.spare(running, now)
            return []
        if self.broker_down:
            log('the broker answers again')
            self.broker_down = False
            # The workers reconnect by themselves, after a wait of their own:
            # their silence counts from the longest of those waits on.
            self.spare(running, now + RECONNECT_BACKOFF)
        restarted = []
        answered = set(answer.get('ping') or [])
        for name, (worker, pid) in running.items():
            if worker['node'] in answered:
                self.alive[name] = now
                self.left_alone.discard(name)
                continue
            silent = now - self.alive.get(name, now)
            if silent < threshold:
                continue
            state = self.state_of(pid)
            pool = worker.get('pool', 'prefork')
            if pool not in ANSWERS_WHILE_BUSY and state not in ('T', 't'):
                if name not in self.left_alone:
                    log('worker %s (%s, pid %d, state %s) has not answered ping for %d s; its pool (%s) cannot answer '
                        'while a task runs and its main process is not stopped: leaving it alone'
                        % (name, worker['node'], pid, state, silent, pool))
                    self.left_alone.add(name)
                continue
            self.left_alone.discard(name)
            if WARM_SHUTDOWN in self._log(worker, pid):
                self.alive[name] = now
                continue
            self.restart(worker, pid, silent, state)
            self.alive[name] = self.clock()
            restarted.append(name)
        return restarted

    def spare(self, names, since):
        """Count the workers' silence from `since` on: nobody could judge them."""
        for name in names:
            self.alive[name] = since

    def _log(self, worker, pid):
        try:
            return self.manager.log_since_start(worker['service'], pid, worker['node']) or ''
        except Exception:  # no log to read is no sign of a shutdown
            return ''

    def restart(self, worker, pid, silent, state):
        window = self.config['stop_window']
        log('worker %s (%s, pid %d, state %s) has not answered ping for %d s while the broker answers: restarting it '
            '(warm shutdown, then SIGKILL after %d s)' % (worker['name'], worker['node'], pid, state, silent, window))
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = self.clock() + window
        while self.clock() < deadline:
            self.sleep(1)
            try:
                _up, now_pid, _words = self.manager.state(worker['service'])
            except Exception:  # unknown is not gone: wait on
                now_pid = pid
            if now_pid != pid or self.state_of(pid) in (None, 'Z', 'X'):
                log('worker %s ended its warm shutdown; its manager starts it again' % worker['name'])
                return
        log('worker %s (pid %d) still runs %d s after SIGTERM: killing its processes; its manager starts it again'
            % (worker['name'], pid, window))
        self.manager.kill_all(worker['service'], pid)

    def run_forever(self):
        log('watching %s every %d s (restart after %d s without an answer)'
            % (', '.join(w['node'] for w in self.config['workers']), self.config['interval'], self.config['threshold']))
        while True:
            started = self.clock()
            try:
                self.round()
            except Exception as exc:  # never let one round's failure end the watch
                log('a round failed: %s: %s' % (type(exc).__name__, exc))
            self.sleep(max(0.0, self.config['interval'] - (self.clock() - started)))


def run_command(args):
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, **C_LOCALE), check=False, timeout=60)
    return proc.returncode, proc.stdout


def main(argv):
    with open(argv[1]) as config_file:
        config = json.load(config_file)
    for worker in config['workers']:
        # %h: the host name, as the workers' --hostname expands it.
        worker['node'] = worker['node'].replace('%h', socket.gethostname())
    manager = Systemd(run_command) if config['manager'] == 'systemd' else Supervisor(run_command)
    probe = Probe(config)
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(0))
    try:
        Watchdog(config, manager, probe).run_forever()
    finally:
        # Stopped or restarted (a release switch restarts it): the probe, in a
        # session of its own that the manager's signal does not reach, ends now,
        # not whenever it next reads its input. It only reads, so it is killed
        # at once: its own exit (the broker connection's teardown) takes seconds,
        # and every release switch waits for this stop.
        probe.close(grace=0)


if __name__ == '__main__':
    main(sys.argv)
