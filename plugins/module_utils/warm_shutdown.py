# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Shared logic of the celeryops.celery.warm_shutdown module.

Process discovery (/proc, cgroups), the two process-manager layers (systemd,
supervisor), signalling guarded against PID reuse, and the loop that waits
for every tracked process and escalates when the warm-shutdown window ends.

Nothing here talks to AnsibleModule directly: the managers take a
``run_command(args) -> (rc, stdout, stderr)`` callable, and the engine takes
a clock, so everything can be driven by unit tests.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import re
import select
import signal
import subprocess
import time

C_LOCALE = {'LANG': 'C', 'LC_ALL': 'C', 'LC_MESSAGES': 'C'}

MANAGERS = ('systemd', 'supervisor')
ON_TIMEOUT_CHOICES = ('fail', 'cold', 'kill')

# KillMode values under which "systemctl stop" sends SIGTERM to the main process only.
SAFE_KILL_MODES = ('mixed', 'process', 'none')

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
# How long a background "supervisorctl stop" may take to return once its program is gone.
REAP_GRACE = 10.0

# Processes found through the /proc tree (no cgroup) are rescanned at most this often.
TREE_RESCAN_INTERVAL = 0.5

# Upper bound for poll_interval: an exit must be noticed within 0.25 s.
MAX_POLL_INTERVAL = 0.25
MIN_POLL_INTERVAL = 0.005

_SIGTERM = int(signal.SIGTERM)


class WarmShutdownError(Exception):
    """A failure with a message meant for the user (no traceback)."""

    def __init__(self, msg, services=None, changed=False):
        super(WarmShutdownError, self).__init__(msg)
        self.msg = msg
        self.services = services or []
        self.changed = changed


def _to_text(value):
    if value is None:
        return u''
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return u'%s' % (value,)


def one_line(*texts, **kwargs):
    """Collapse what a manager printed into one trimmed line."""
    limit = kwargs.get('limit', 300)
    parts = []
    for text in texts:
        for line in _to_text(text).splitlines():
            line = ' '.join(line.split())
            if line:
                parts.append(line)
    result = ' / '.join(parts)
    if len(result) > limit:
        result = result[:limit - 3] + '...'
    return result or '(no output)'


def format_pids(pids):
    return ', '.join(str(p) for p in sorted(pids)) or 'none'


def format_seconds(value):
    """Format a number of seconds the way the messages use it (600 -> '600s', 1.5 -> '1.5s')."""
    if value is None:
        return 'infinity'
    if float(value).is_integer():
        return '%ds' % int(value)
    return '%ss' % round(value, 3)


_TIMESPAN_UNITS = (
    ('usec', 1e-6), ('us', 1e-6), (u'\u00b5s', 1e-6),
    ('msec', 1e-3), ('ms', 1e-3),
    ('seconds', 1.0), ('second', 1.0), ('sec', 1.0), ('s', 1.0),
    ('minutes', 60.0), ('minute', 60.0), ('min', 60.0), ('m', 60.0),
    ('hours', 3600.0), ('hour', 3600.0), ('hr', 3600.0), ('h', 3600.0),
    ('days', 86400.0), ('day', 86400.0), ('d', 86400.0),
    ('weeks', 604800.0), ('week', 604800.0), ('w', 604800.0),
    ('months', 2629800.0), ('month', 2629800.0), ('M', 2629800.0),
    ('years', 31557600.0), ('year', 31557600.0), ('y', 31557600.0),
)
_TIMESPAN_RE = re.compile(u'([0-9]+(?:\\.[0-9]+)?)\\s*([a-zA-Z\u00b5]*)')


def parse_timespan(text):
    """Parse a systemd time span as printed by 'systemctl show' ('1min 30s', '10min', 'infinity', '90').

    Returns seconds as a float, None for infinity or anything not understood.
    """
    text = _to_text(text).strip()
    if not text or text == 'infinity':
        return None
    units = dict(_TIMESPAN_UNITS)
    total = 0.0
    pos = 0
    for match in _TIMESPAN_RE.finditer(text):
        if text[pos:match.start()].strip():
            return None
        pos = match.end()
        number, unit = match.groups()
        if not unit:
            # A bare number is in seconds for *Sec= settings; *USec properties are never printed that way.
            factor = 1.0
        elif unit in units:
            factor = units[unit]
        else:
            return None
        total += float(number) * factor
    if text[pos:].strip() or pos == 0:
        return None
    return total


# --------------------------------------------------------------------------
# /proc and cgroup reading
# --------------------------------------------------------------------------

class ProcStat(object):
    """The fields of /proc/<pid>/stat that this module needs."""

    __slots__ = ('pid', 'ppid', 'state', 'starttime')

    def __init__(self, pid, ppid, state, starttime):
        self.pid = pid
        self.ppid = ppid
        self.state = state
        self.starttime = starttime

    @property
    def exited(self):
        # A zombie (Z) or dead (X) process has finished: only its exit status is left to reap.
        return self.state in ('Z', 'X')

    def __repr__(self):
        return 'ProcStat(pid=%r, ppid=%r, state=%r, starttime=%r)' % (self.pid, self.ppid, self.state, self.starttime)


def parse_stat(pid, data):
    """Parse the content of /proc/<pid>/stat; None if it does not look like one.

    The command name (field 2) is in parentheses and may itself contain spaces
    and parentheses, so split after the LAST ')'.
    """
    text = _to_text(data)
    end = text.rfind(')')
    if end < 0:
        return None
    fields = text[end + 1:].split()
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19] field 22 (starttime).
    if len(fields) < 20:
        return None
    try:
        return ProcStat(int(pid), int(fields[1]), fields[0], int(fields[19]))
    except ValueError:
        return None


class ProcFS(object):
    """Read-only access to /proc and the cgroup file systems (roots overridable for tests)."""

    def __init__(self, proc_root='/proc', cgroup_root='/sys/fs/cgroup'):
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root

    def stat(self, pid):
        try:
            with open(os.path.join(self.proc_root, str(pid), 'stat'), 'rb') as f:
                data = f.read()
        except (IOError, OSError):
            return None
        return parse_stat(pid, data)

    def pids(self):
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit()]

    def descendants(self, roots):
        """Every living process below the given PIDs (found through the PPID field)."""
        roots = set(roots)
        if not roots:
            return set()
        children = {}
        for pid in self.pids():
            st = self.stat(pid)
            if st is None or st.exited:
                continue
            children.setdefault(st.ppid, []).append(pid)
        found = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            for child in children.get(pid, ()):
                if child not in found and child not in roots:
                    found.add(child)
                    todo.append(child)
        return found

    def cgroup_dirs(self, control_group):
        """Directories where the cgroup of a unit may be mounted (unified, v1 'systemd' hierarchy, hybrid)."""
        rel = _to_text(control_group).strip().strip('/')
        if not rel:
            # Never read the root cgroup: that would be every process on the host.
            return []
        return [
            os.path.join(self.cgroup_root, rel),
            os.path.join(self.cgroup_root, 'systemd', rel),
            os.path.join(self.cgroup_root, 'unified', rel),
        ]

    def find_cgroup(self, control_group):
        """The first existing cgroup directory for ControlGroup, or None."""
        for path in self.cgroup_dirs(control_group):
            if os.path.isfile(os.path.join(path, 'cgroup.procs')):
                return path
        return None

    def cgroup_pids(self, path):
        """All PIDs in the cgroup directory and its sub-cgroups ([] once the cgroup is gone)."""
        pids = set()
        for dirpath, dummy, filenames in os.walk(path):
            if 'cgroup.procs' not in filenames:
                continue
            try:
                with open(os.path.join(dirpath, 'cgroup.procs'), 'rb') as f:
                    data = f.read()
            except (IOError, OSError):
                continue
            for token in data.split():
                try:
                    pid = int(token)
                except ValueError:
                    continue
                if pid > 0:
                    pids.add(pid)
        return pids


# --------------------------------------------------------------------------
# Tracking and signalling processes
# --------------------------------------------------------------------------

class TrackedProcess(object):
    """A process identified by PID and start time, so a reused PID is never mistaken for it."""

    def __init__(self, pid, starttime, pidfd=None):
        self.pid = pid
        self.starttime = starttime
        self.pidfd = pidfd
        self.exited = False

    def __repr__(self):
        return 'TrackedProcess(pid=%r, starttime=%r, exited=%r)' % (self.pid, self.starttime, self.exited)


class ProcessOps(object):
    """Identity-checked liveness tests, signals and waiting.

    Uses pidfds (os.pidfd_open, signal.pidfd_send_signal, select.poll) where
    the Python and the kernel have them, which makes signals race-free and
    lets the wait wake up as soon as a process exits; otherwise it polls
    /proc and uses os.kill after checking the start time.
    """

    def __init__(self, procfs=None, kill=None, sleep=None, use_pidfd=True):
        self.procfs = procfs or ProcFS()
        self.kill = kill or os.kill
        self.sleep = sleep or time.sleep
        self.use_pidfd = bool(use_pidfd) and hasattr(os, 'pidfd_open') and hasattr(select, 'poll')
        self.own_pid = os.getpid()

    def track(self, pid):
        """Start tracking a PID; None if it does not exist (any more), is a zombie, or is ourselves."""
        if pid == self.own_pid or pid <= 0:
            return None
        st = self.procfs.stat(pid)
        if st is None or st.exited:
            return None
        proc = TrackedProcess(pid, st.starttime)
        if self.use_pidfd:
            try:
                fd = os.pidfd_open(pid)  # pylint: disable=no-member
            except OSError as e:
                if e.errno == errno.ESRCH:
                    return None
                if e.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    # Old kernel or a sandbox without pidfd support: poll /proc instead.
                    self.use_pidfd = False
                # EMFILE/ENFILE and the like: go without a pidfd for this one (it is polled through /proc).
            else:
                # The pidfd may have been opened on a new process that reused the PID.
                st2 = self.procfs.stat(pid)
                if st2 is None or st2.starttime != st.starttime:
                    os.close(fd)
                    return None
                proc.pidfd = fd
        return proc

    def _mark_exited(self, proc):
        proc.exited = True
        self.release(proc)

    def release(self, proc):
        if proc.pidfd is not None:
            try:
                os.close(proc.pidfd)
            except OSError:
                pass
            proc.pidfd = None

    def is_alive(self, proc):
        if proc.exited:
            return False
        st = self.procfs.stat(proc.pid)
        if st is None or st.starttime != proc.starttime or st.exited:
            self._mark_exited(proc)
            return False
        return True

    def signal(self, proc, sig):
        """Send sig to proc if it is still the same process. True if sent."""
        if not self.is_alive(proc):
            return False
        sender = getattr(signal, 'pidfd_send_signal', None)
        try:
            if proc.pidfd is not None and sender is not None:
                sender(proc.pidfd, sig)
            else:
                self.kill(proc.pid, sig)
        except OSError as e:
            if e.errno == errno.ESRCH:
                self._mark_exited(proc)
                return False
            raise WarmShutdownError(
                'cannot send %s to PID %d: %s (the module needs to run as root or as the user of the '
                'service: use become)' % (signal_name(sig), proc.pid, e.strerror or e))
        return True

    def wait(self, timeout, procs):
        """Sleep up to timeout seconds, waking early when one of procs exits (pidfds)."""
        timeout = max(0.0, timeout)
        fds = {}
        for proc in procs:
            if proc.pidfd is not None and not proc.exited:
                fds[proc.pidfd] = proc
        if not fds:
            self.sleep(timeout)
            return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            events = poller.poll(int(timeout * 1000))
        except OSError:
            # EINTR and the like: the caller polls again anyway.
            return
        for fd, dummy in events:
            proc = fds.get(fd)
            if proc is not None:
                # A readable pidfd means the process has terminated.
                self._mark_exited(proc)


def signal_name(sig):
    try:
        return signal.Signals(sig).name
    except (ValueError, AttributeError):
        return 'signal %s' % sig


# --------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------

class Service(object):
    """One service (systemd unit or supervisor program) and what happened to it."""

    def __init__(self, name, manager):
        self.name = name
        self.manager = manager
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


class SystemdManager(object):
    """systemd layer: 'systemctl show' for discovery, 'systemctl stop --no-block' to stop."""

    kind = 'systemd'
    PROPERTIES = ('Id', 'LoadState', 'LoadError', 'ActiveState', 'SubState', 'MainPID',
                  'ControlGroup', 'KillMode', 'KillSignal', 'TimeoutStopUSec')

    def __init__(self, run_command, systemctl, ops):
        self.run_command = run_command
        self.systemctl = systemctl
        self.ops = ops

    def normalize(self, name):
        name = _to_text(name).strip()
        if not name or len(name.split()) != 1:
            raise WarmShutdownError('services: %r is not a systemd unit name' % (name,))
        if not name.endswith('.service'):
            name += '.service'
        return name

    def _show(self, unit):
        cmd = [self.systemctl, 'show', unit]
        for prop in self.PROPERTIES:
            cmd.extend(['-p', prop])
        rc, out, err = self.run_command(cmd)
        if rc != 0:
            raise WarmShutdownError('%s: "systemctl show %s" failed (rc=%s): %s' % (unit, unit, rc, one_line(err, out)))
        props = {}
        for line in _to_text(out).splitlines():
            key, sep, value = line.partition('=')
            if sep:
                props[key.strip()] = value.strip()
        return props

    def discover(self, name):
        svc = Service(name, self)
        props = self._show(name)
        svc.props = props
        active = props.get('ActiveState', '')
        sub = props.get('SubState', '')
        svc.state = '%s (%s)' % (active or 'unknown', sub or 'unknown') if sub else (active or 'unknown')
        try:
            main_pid = int(props.get('MainPID') or 0)
        except ValueError:
            main_pid = 0
        cgroup = props.get('ControlGroup', '')
        svc.cgroup_path = self.ops.procfs.find_cgroup(cgroup) if cgroup else None
        if props.get('LoadState') == 'not-found' and main_pid <= 0 and svc.cgroup_path is None and active in ('', 'inactive'):
            said = props.get('LoadError') or 'LoadState=not-found'
            raise WarmShutdownError('%s: no such systemd unit (systemd says: %s)' % (name, one_line(said)))
        if svc.cgroup_path is not None:
            pids = self.ops.procfs.cgroup_pids(svc.cgroup_path)
            if main_pid > 0:
                pids.add(main_pid)
        elif main_pid > 0:
            pids = set([main_pid]) | self.ops.procfs.descendants([main_pid])
        else:
            pids = set()
        for pid in sorted(pids):
            svc.add(self.ops, pid)
        if main_pid > 0:
            svc.main = svc.tracked.get(main_pid)
            svc.main_pid = main_pid if svc.main is not None else None
        svc.processes_at_start = sorted(svc.tracked)
        svc.running = bool(svc.tracked)
        return svc

    def validate(self, svc):
        if not svc.running:
            return
        kill_mode = svc.props.get('KillMode') or 'control-group'
        if kill_mode not in SAFE_KILL_MODES:
            raise WarmShutdownError(
                '%s: refusing to stop a unit with KillMode=%s. With it, "systemctl stop" sends SIGTERM to every '
                'process in the control group, including the Celery prefork pool children, which reset SIGTERM to '
                'the default action and die at once, killing the tasks they are running; only the worker\'s main '
                'process turns SIGTERM into a warm shutdown. Nothing was stopped. Set KillMode=mixed in the unit '
                '(SIGTERM to the main process only, SIGKILL to what is left after TimeoutStopSec), run '
                '"systemctl daemon-reload", and try again.' % (svc.name, kill_mode))

    def warnings(self, svc, timeout):
        result = []
        if not svc.running:
            return result
        kill_signal = svc.props.get('KillSignal', '')
        if kill_signal and kill_signal not in (str(_SIGTERM), 'SIGTERM', 'TERM'):
            result.append('%s: KillSignal=%s: a Celery worker only does a warm shutdown on SIGTERM, so the stop may '
                          'not be warm.' % (svc.name, kill_signal))
        stop_timeout = parse_timespan(svc.props.get('TimeoutStopUSec', ''))
        if stop_timeout is not None and stop_timeout < timeout:
            result.append('%s: TimeoutStopSec=%s is shorter than timeout=%ds: systemd will SIGKILL the processes '
                          'still running (and their tasks) when it expires. Raise TimeoutStopSec to at least the '
                          'timeout.' % (svc.name, format_seconds(stop_timeout), timeout))
        return result

    def stop(self, svc):
        rc, out, err = self.run_command([self.systemctl, 'stop', '--no-block', svc.name])
        if rc != 0:
            raise WarmShutdownError('%s (%s): "systemctl stop --no-block %s" failed (rc=%s): %s'
                                    % (svc.name, svc.state, svc.name, rc, one_line(err, out)))

    def current_pids(self, svc):
        if svc.cgroup_path is not None:
            return self.ops.procfs.cgroup_pids(svc.cgroup_path)
        return self.ops.procfs.descendants(p.pid for p in svc.tracked.values() if not p.exited)

    def finish(self, svc):
        return []

    def verify_stopped(self, svc):
        # The queued stop job cancels a pending automatic restart by itself.
        return None

    def left_running_note(self, svc):
        timeout = parse_timespan(svc.props.get('TimeoutStopUSec', ''))
        if timeout is None:
            return ('systemd\'s stop job stays queued with TimeoutStopSec=infinity, so systemd will not kill them: '
                    'they go on until the tasks end')
        return ('systemd\'s stop job stays queued and systemd sends SIGKILL to what is left when TimeoutStopSec '
                '(%s) expires' % format_seconds(timeout))


class SupervisorManager(object):
    """supervisor layer: 'supervisorctl status/pid' for discovery, a background 'supervisorctl stop' to stop."""

    kind = 'supervisor'

    def __init__(self, run_command, supervisorctl, ops, config=None, popen=None, environ=None):
        self.run_command = run_command
        self.supervisorctl = supervisorctl
        self.config = config
        self.ops = ops
        self.popen = popen or subprocess.Popen
        env = dict(os.environ if environ is None else environ)
        env.update(C_LOCALE)
        self.environ = env

    def base(self):
        cmd = [self.supervisorctl]
        if self.config:
            cmd.extend(['-c', self.config])
        return cmd

    def normalize(self, name):
        name = _to_text(name).strip()
        if not name or len(name.split()) != 1:
            raise WarmShutdownError('services: %r is not a supervisor program name' % (name,))
        if name.endswith(':') or '*' in name or name == 'all':
            raise WarmShutdownError('services: %s names a group or several programs; list each program as '
                                    'group:program, as "supervisorctl status" shows it' % name)
        return name

    def _unknown(self, name, said):
        return WarmShutdownError('%s: supervisor has no such program (supervisorctl says: %s); use the name '
                                 '"supervisorctl status" shows, group:program for a program in a group'
                                 % (name, one_line(said)))

    def discover(self, name):
        svc = Service(name, self)
        rc, out, err = self.run_command(self.base() + ['status', name])
        state = None
        for line in _to_text(out).splitlines():
            if 'ERROR (no such process)' in line or 'ERROR (no such group)' in line:
                raise self._unknown(name, line)
            fields = line.split()
            if len(fields) >= 2 and fields[0] == name:
                state = fields[1]
        if state is None:
            raise WarmShutdownError('%s: "supervisorctl status %s" gave no state (rc=%s): %s'
                                    % (name, name, rc, one_line(out, err)))
        svc.state = state
        rc, out, err = self.run_command(self.base() + ['pid', name])
        text = _to_text(out).strip()
        if 'no such process' in text.lower():
            raise self._unknown(name, text)
        try:
            main_pid = int(text.splitlines()[-1].strip())
        except (ValueError, IndexError):
            raise WarmShutdownError('%s (%s): "supervisorctl pid %s" did not print a PID (rc=%s): %s'
                                    % (name, state, name, rc, one_line(out, err)))
        if main_pid > 0:
            svc.main = svc.add(self.ops, main_pid)
            if svc.main is not None:
                svc.main_pid = main_pid
                for pid in sorted(self.ops.procfs.descendants([main_pid])):
                    svc.add(self.ops, pid)
        svc.processes_at_start = sorted(svc.tracked)
        svc.running = bool(svc.tracked)
        return svc

    def validate(self, svc):
        return None

    def warnings(self, svc, timeout):
        return []

    def stop(self, svc):
        cmd = self.base() + ['stop', svc.name]
        if not svc.running:
            # Cancels a pending autorestart (BACKOFF, EXITED); "ERROR (not running)" is fine.
            rc, out, err = self.run_command(cmd)
            said = one_line(out, err)
            if 'no such process' in said.lower():
                raise self._unknown(svc.name, said)
            return
        if svc.state == 'STOPPING':
            # supervisord is already stopping it (and would answer "not running"): just wait.
            return
        try:
            # In the background, beside the other services' stops, while the processes are watched:
            # run_command would wait for it.
            # pylint: disable-next=ansible-bad-function
            svc.handle = self.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=self.environ, close_fds=True)
        except OSError as e:
            raise WarmShutdownError('%s (%s): cannot run "%s": %s' % (svc.name, svc.state, ' '.join(cmd), e))

    def current_pids(self, svc):
        return self.ops.procfs.descendants(p.pid for p in svc.tracked.values() if not p.exited)

    def finish(self, svc):
        """Reap the background 'supervisorctl stop'; returns warnings."""
        handle, svc.handle = svc.handle, None
        if handle is None:
            return []
        grace = REAP_GRACE if not svc.remaining else 0.5
        try:
            out = handle.communicate(timeout=grace)[0]
        except subprocess.TimeoutExpired:
            # Dropping the client does not cancel the stop: supervisord carries on by itself.
            handle.kill()
            out = handle.communicate()[0]
            if not svc.remaining:
                return ['%s: "supervisorctl stop %s" had not returned %s after the program exited; it was ended '
                        '(supervisord finishes the stop by itself)' % (svc.name, svc.name, format_seconds(grace))]
            return []
        said = one_line(out)
        if handle.returncode != 0 or ('ERROR' in said and 'not running' not in said):
            return ['%s: "supervisorctl stop %s" ended with rc=%s: %s' % (svc.name, svc.name, handle.returncode, said)]
        return []

    def verify_stopped(self, svc):
        """For a program that was not running: make sure autorestart did not bring it back meanwhile."""
        rc, out, err = self.run_command(self.base() + ['status', svc.name])
        for line in _to_text(out).splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == svc.name:
                if fields[1] in ('STARTING', 'RUNNING', 'BACKOFF', 'STOPPING'):
                    return ('%s: was %s when checked, but supervisord has started it again (autorestart) before the '
                            'stop reached it; it is now %s. Run the module again to stop it.'
                            % (svc.name, svc.state, fields[1]))
                return None
        return None

    def left_running_note(self, svc):
        return ('supervisord keeps it in STOPPING and sends SIGKILL (to the whole process group with '
                'killasgroup=true) when the program\'s stopwaitsecs expires')


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------

class WarmShutdown(object):
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
