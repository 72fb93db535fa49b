# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The supervisor layer: `supervisorctl status/pid` to discover a program's
processes, a background `supervisorctl stop` to stop it."""

import os
import subprocess

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import C_LOCALE, WarmShutdownError, format_seconds, one_line, to_text
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.engine import Service

# How long a background "supervisorctl stop" may take to return once its program is gone.
REAP_GRACE = 10.0


class SupervisorManager:
    """supervisor layer: 'supervisorctl status/pid' for discovery, a background 'supervisorctl stop' to stop."""

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
        name = to_text(name).strip()
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
        svc = Service(name)
        rc, out, err = self.run_command(self.base() + ['status', name])
        state = None
        for line in to_text(out).splitlines():
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
        text = to_text(out).strip()
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
        for line in to_text(out).splitlines():
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
