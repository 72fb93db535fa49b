# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The systemd layer: `systemctl show` to discover a unit's processes,
`systemctl stop --no-block` to stop it."""

import signal

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import WarmShutdownError, format_seconds, one_line, parse_timespan, to_text
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.engine import Service

# KillMode values under which "systemctl stop" sends SIGTERM to the main process only.
SAFE_KILL_MODES = ('mixed', 'process', 'none')
_SIGTERM = int(signal.SIGTERM)


class SystemdManager:
    """systemd layer: 'systemctl show' for discovery, 'systemctl stop --no-block' to stop."""

    PROPERTIES = ('Id', 'LoadState', 'LoadError', 'ActiveState', 'SubState', 'MainPID',
                  'ControlGroup', 'KillMode', 'KillSignal', 'TimeoutStopUSec')

    def __init__(self, run_command, systemctl, ops):
        self.run_command = run_command
        self.systemctl = systemctl
        self.ops = ops

    def normalize(self, name):
        name = to_text(name).strip()
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
        for line in to_text(out).splitlines():
            key, sep, value = line.partition('=')
            if sep:
                props[key.strip()] = value.strip()
        return props

    def discover(self, name):
        svc = Service(name)
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
