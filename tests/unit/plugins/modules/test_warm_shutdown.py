# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import errno
import json
import signal

from unittest import mock

import pytest

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown import supervisor
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.procfs import ProcFS, ProcStat
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.systemd import SystemdManager
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.tracking import ProcessOps
from ansible_collections.celeryops.celery.plugins.modules import warm_shutdown as module


try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    @contextlib.contextmanager
    def patch_module_args(args=None):
        serialized = to_bytes(json.dumps({'ANSIBLE_MODULE_ARGS': args or {}}))
        with mock.patch.object(basic, '_ANSIBLE_ARGS', serialized):
            yield


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def exit_json(self, **kwargs):
    kwargs.setdefault('changed', False)
    raise ExitJson(kwargs)


def fail_json(self, msg, **kwargs):
    kwargs['failed'] = True
    kwargs['msg'] = msg
    raise FailJson(kwargs)


class FakeProcFS(ProcFS):
    """Processes in a dict; SIGTERM through the fake systemctl ends a worker at once unless it is stuck."""

    def __init__(self):
        super(FakeProcFS, self).__init__(proc_root='/nonexistent', cgroup_root='/nonexistent')
        self.procs = {}       # pid -> (ppid, starttime)
        self.stuck = set()
        self.signals = []

    def spawn(self, pid, ppid=1):
        self.procs[pid] = (ppid, 7000 + pid)

    def stat(self, pid):
        if pid not in self.procs:
            return None
        ppid, starttime = self.procs[pid]
        return ProcStat(pid, ppid, 'S', starttime)

    def pids(self):
        return list(self.procs)

    def kill(self, pid, sig):
        self.signals.append((pid, sig))
        if pid not in self.procs:
            raise OSError(errno.ESRCH, 'No such process')
        if sig == signal.SIGKILL:
            self.procs.pop(pid)

    def terminate_tree(self, main):
        """A warm shutdown that completes at once: children, then the main process."""
        if main in self.stuck:
            return
        for pid in sorted(self.descendants([main])):
            self.procs.pop(pid, None)
        self.procs.pop(main, None)


class FakeCommands:
    def __init__(self, fs):
        self.fs = fs
        self.calls = []
        self.units = {}
        self.programs = {}

    def run_command(self, args, **kwargs):
        self.calls.append((list(args), kwargs))
        if args[1] == 'show':
            props = self.units.get(args[2])
            if props is None:
                return 0, 'LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n', ''
            return 0, ''.join('%s=%s\n' % kv for kv in props.items()), ''
        if args[1] == 'stop':
            props = self.units[args[3]]
            self.fs.terminate_tree(int(props['MainPID']))
            return 0, '', ''
        if args[-2] == 'status':
            prog = self.programs.get(args[-1])
            if prog is None:
                return 4, '%s: ERROR (no such process)\n' % args[-1], ''
            return 0, '%s   %s   pid %s, uptime 0:10:00\n' % (args[-1], prog['state'], prog['pid']), ''
        if args[-2] == 'pid':
            return 0, '%s\n' % self.programs[args[-1]]['pid'], ''
        raise AssertionError(args)


class FakePopen:
    def __init__(self, fs, programs, args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.returncode = None
        fs.terminate_tree(programs[args[-1]]['pid'])

    def communicate(self, timeout=None):
        self.returncode = 0
        return b'%s: stopped\n' % self.args[-1].encode(), None

    def kill(self):
        pass


@pytest.fixture
def env(tmp_path):
    fs = FakeProcFS()
    cmds = FakeCommands(fs)
    popens = []

    def popen(args, **kwargs):
        p = FakePopen(fs, cmds.programs, args, **kwargs)
        popens.append(p)
        return p

    def make_ops():
        return ProcessOps(procfs=fs, kill=fs.kill, use_pidfd=False)

    def get_bin_path(self, arg, required=False, opt_dirs=None):
        return {'systemctl': '/usr/bin/systemctl', 'supervisorctl': '/usr/bin/supervisorctl'}.get(arg)

    with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json,
                             get_bin_path=get_bin_path,
                             run_command=lambda self, args, **kwargs: cmds.run_command(args, **kwargs)):
        with mock.patch.object(module, 'ProcessOps', make_ops):
            with mock.patch.object(supervisor.subprocess, 'Popen', popen):
                yield fs, cmds, popens


def run_module(args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises((ExitJson, FailJson)) as exc:
            module.main()
    return exc.value.args[0]


def systemd_unit(main, **kwargs):
    props = dict(LoadState='loaded', ActiveState='active', SubState='running', MainPID=str(main),
                 ControlGroup='/system.slice/x.service', KillMode='mixed', KillSignal='15', TimeoutStopUSec='infinity')
    props.update(kwargs)
    return props


@pytest.mark.parametrize('args,option', [
    ({'timeout': 0}, 'timeout'),
    ({'cold_timeout': 0}, 'cold_timeout'),
    ({'poll_interval': 5.0}, 'poll_interval'),
    ({'poll_interval': 0.0}, 'poll_interval'),
])
def test_numeric_options_are_checked(env, args, option):
    result = run_module(dict({'manager': 'systemd', 'services': ['w']}, **args))
    assert result['failed']
    assert result['msg'].startswith(option + ' ')
    assert env[1].calls == []


def test_services_must_not_be_empty(env):
    result = run_module({'manager': 'systemd', 'services': []})
    assert result['failed']
    assert 'services' in result['msg']


def test_choices(env):
    result = run_module({'manager': 'upstart', 'services': ['w']})
    assert result['failed']
    assert 'manager' in result['msg']
    result = run_module({'manager': 'systemd', 'services': ['w'], 'on_timeout': 'later'})
    assert result['failed']
    assert 'on_timeout' in result['msg']


def test_systemd_check_mode(env):
    fs, cmds, dummy = env
    fs.spawn(100)
    fs.spawn(101, 100)
    cmds.units['myapp-worker-default.service'] = systemd_unit(100)
    cmds.units['myapp-beat.service'] = systemd_unit(0, ActiveState='inactive', SubState='dead')
    result = run_module({'manager': 'systemd', 'services': ['myapp-worker-default', 'myapp-beat.service']},
                        check_mode=True)
    assert result['changed'] is True
    assert [(s['name'], s['outcome'], s['main_pid'], s['processes_at_start']) for s in result['services']] == [
        ('myapp-worker-default.service', 'would_stop', 100, [100, 101]),
        ('myapp-beat.service', 'already_stopped', None, []),
    ]
    assert [c[0][1] for c in cmds.calls] == ['show', 'show']
    # parsed output must not depend on the target's locale
    for args, kwargs in cmds.calls:
        assert kwargs['environ_update']['LANG'] == 'C'
        assert kwargs['environ_update']['LC_ALL'] == 'C'
    assert fs.signals == []
    assert 100 in fs.procs


def test_systemd_run(env):
    fs, cmds, dummy = env
    fs.spawn(100)
    fs.spawn(101, 100)
    fs.spawn(102, 100)
    cmds.units['w.service'] = systemd_unit(100)
    result = run_module({'manager': 'systemd', 'services': ['w']})
    assert result['changed'] is True
    assert set(result) >= set(['changed', 'services', 'elapsed'])
    assert isinstance(result['elapsed'], float)
    svc = result['services'][0]
    assert sorted(svc) == ['main_pid', 'name', 'outcome', 'processes_at_start', 'remaining', 'waited']
    assert svc['name'] == 'w.service'
    assert svc['main_pid'] == 100
    assert svc['processes_at_start'] == [100, 101, 102]
    assert svc['outcome'] == 'warm'
    assert svc['remaining'] == []
    assert isinstance(svc['waited'], float)
    assert ['/usr/bin/systemctl', 'stop', '--no-block', 'w.service'] in [c[0] for c in cmds.calls]
    assert fs.procs == {}


def test_systemd_unknown_unit(env):
    fs, cmds, dummy = env
    result = run_module({'manager': 'systemd', 'services': ['ghost']})
    assert result['failed']
    assert result['msg'].startswith('ghost.service: no such systemd unit (systemd says: LoadState=not-found)')
    assert result['changed'] is False


def test_systemd_kill_mode(env):
    fs, cmds, dummy = env
    fs.spawn(100)
    cmds.units['w.service'] = systemd_unit(100, KillMode='control-group')
    result = run_module({'manager': 'systemd', 'services': ['w']})
    assert result['failed']
    assert 'KillMode=control-group' in result['msg']
    assert 'KillMode=mixed' in result['msg']
    assert 'stop' not in [c[0][1] for c in cmds.calls]


def test_systemd_timeout_fail(env):
    fs, cmds, dummy = env
    fs.spawn(100)
    fs.spawn(101, 100)
    fs.stuck.add(100)
    cmds.units['w.service'] = systemd_unit(100, TimeoutStopUSec='20min')
    result = run_module({'manager': 'systemd', 'services': ['w'], 'timeout': 1})
    assert result['failed']
    assert result['changed'] is True
    assert result['msg'].startswith('w.service: the warm shutdown did not finish within timeout=1s')
    assert 'PIDs still alive: 100, 101 (main PID 100)' in result['msg']
    assert 'on_timeout=cold' in result['msg']
    assert result['services'][0]['outcome'] == 'timeout'
    assert result['services'][0]['remaining'] == [100, 101]
    assert 1.0 <= result['services'][0]['waited'] < 2.0
    assert fs.signals == []
    # the TimeoutStopSec warning is not raised: 20min >= 1s
    assert 'elapsed' in result


def test_systemd_timeout_kill(env):
    fs, cmds, dummy = env
    fs.spawn(100)
    fs.spawn(101, 100)
    fs.stuck.add(100)
    cmds.units['w.service'] = systemd_unit(100)
    result = run_module({'manager': 'systemd', 'services': ['w'], 'timeout': 1, 'on_timeout': 'kill'})
    assert not result.get('failed')
    assert result['services'][0]['outcome'] == 'killed'
    assert fs.signals == [(100, signal.SIGKILL), (101, signal.SIGKILL)]


def test_systemctl_path_must_exist(env, tmp_path):
    result = run_module({'manager': 'systemd', 'services': ['w'], 'systemctl_path': str(tmp_path / 'nope')})
    assert result['failed']
    assert result['msg'].startswith('systemctl_path: ')


def test_systemctl_path_is_used(env, tmp_path):
    fs, cmds, dummy = env
    exe = tmp_path / 'systemctl'
    exe.write_text('#!/bin/sh\n')
    exe.chmod(0o755)
    cmds.units['w.service'] = systemd_unit(0, ActiveState='inactive')
    result = run_module({'manager': 'systemd', 'services': ['w'], 'systemctl_path': str(exe)})
    assert result['services'][0]['outcome'] == 'already_stopped'
    assert cmds.calls[0][0][0] == str(exe)


def test_supervisor_run(env):
    fs, cmds, popens = env
    fs.spawn(200)
    fs.spawn(201, 200)
    cmds.programs['myapp:myapp-worker-default'] = dict(state='RUNNING', pid=200)
    result = run_module({'manager': 'supervisor', 'services': ['myapp:myapp-worker-default'],
                         'supervisor_config': '/etc/supervisor/supervisord.conf'})
    assert result['changed'] is True
    assert result['services'][0]['outcome'] == 'warm'
    assert result['services'][0]['processes_at_start'] == [200, 201]
    assert cmds.calls[0][0] == ['/usr/bin/supervisorctl', '-c', '/etc/supervisor/supervisord.conf', 'status',
                                'myapp:myapp-worker-default']
    assert popens[0].args == ['/usr/bin/supervisorctl', '-c', '/etc/supervisor/supervisord.conf', 'stop',
                              'myapp:myapp-worker-default']
    assert popens[0].kwargs['env']['LC_ALL'] == 'C'
    assert popens[0].returncode == 0


def test_supervisor_unknown(env):
    result = run_module({'manager': 'supervisor', 'services': ['nope']})
    assert result['failed']
    assert result['msg'].startswith('nope: supervisor has no such program (supervisorctl says: nope: ERROR (no such process))')


def test_supervisorctl_not_found(env):
    with mock.patch.object(basic.AnsibleModule, 'get_bin_path', lambda *a, **k: None):
        with mock.patch.object(module.os.path, 'isfile', lambda p: False):
            result = run_module({'manager': 'supervisor', 'services': ['w']})
    assert result['failed']
    assert result['msg'] == ('supervisorctl was not found on PATH nor in /usr/bin, /usr/local/bin; install it or set '
                             'supervisorctl_path')


def test_unexpected_error_is_reported_without_crashing(env):
    fs, cmds, dummy = env
    with mock.patch.object(SystemdManager, 'discover', side_effect=RuntimeError('boom')):
        result = run_module({'manager': 'systemd', 'services': ['w']})
    assert result['failed']
    assert result['msg'] == 'systemd services w: unexpected error: boom'
    assert 'RuntimeError' in result['exception']


# --------------------------------------------------------------------------
# End to end: the real module code, real processes, a stand-in supervisorctl
# --------------------------------------------------------------------------

FAKE_SUPERVISORCTL = r'''#!%(python)s
import os, signal, sys, time

args = sys.argv[1:]
if args[:1] == ['-c']:
    args = args[2:]
cmd, name = args
with open(os.path.join(os.environ['FAKE_SUPERVISOR_DIR'], name)) as f:
    pid = int(f.read())


def alive():
    try:
        with open('/proc/%%d/stat' %% pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except IOError:
        return False


if cmd == 'status':
    print('%%-33s%%-10s%%s' %% (name, 'RUNNING' if alive() else 'STOPPED', 'pid %%d, uptime 0:00:05' %% pid))
elif cmd == 'pid':
    print(pid if alive() else 0)
elif cmd == 'stop':
    if not alive():
        print('%%s: ERROR (not running)' %% name)
        sys.exit(0)
    # The worker's tasks run their time from the stop (see FAKE_WORKER).
    open(os.path.join(os.environ['FAKE_SUPERVISOR_DIR'], name + '.go'), 'w').close()
    os.kill(pid, signal.SIGTERM)          # stopsignal=TERM, stopasgroup=false
    while alive():
        time.sleep(0.05)
    print('%%s: stopped' %% name)
'''

FAKE_WORKER = r'''
import os, signal, sys, time
children = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # "The task in flight": it runs its time from the stop, however slow
        # the machine was to start the workers and the stop.
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.005)
        time.sleep(float(sys.argv[1]))
        os._exit(0)
    children.append(pid)


def warm(signum, frame):
    for c in children:
        os.waitpid(c, 0)
    os._exit(0)


signal.signal(signal.SIGTERM, warm)
print('ready')
sys.stdout.flush()
while True:
    time.sleep(60)
'''


def test_end_to_end_with_real_processes(tmp_path, monkeypatch):
    import subprocess
    import sys

    ctl = tmp_path / 'supervisorctl'
    ctl.write_text(FAKE_SUPERVISORCTL % {'python': sys.executable})
    ctl.chmod(0o755)
    state = tmp_path / 'state'
    state.mkdir()
    monkeypatch.setenv('FAKE_SUPERVISOR_DIR', str(state))
    workers = {}
    try:
        for name, task in (('app:fast', '0.5'), ('app:slow', '5')):
            p = subprocess.Popen([sys.executable, '-c', FAKE_WORKER, task, str(state / (name + '.go'))],
                                 stdout=subprocess.PIPE)
            assert p.stdout.readline() == b'ready\n'
            (state / name).write_text(str(p.pid))
            workers[name] = p
        with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
            result = run_module({'manager': 'supervisor', 'services': ['app:fast', 'app:slow'],
                                 'supervisorctl_path': str(ctl), 'supervisor_config': '/dev/null', 'timeout': 30})
        assert not result.get('failed'), result
        assert result['changed'] is True
        fast, slow = result['services']
        assert fast['outcome'] == slow['outcome'] == 'warm'
        assert fast['main_pid'] == workers['app:fast'].pid
        assert len(fast['processes_at_start']) == 3
        assert fast['remaining'] == slow['remaining'] == []
        # Each stop waited for its tasks in flight (they run from the stop).
        # No upper bound: on a loaded machine a supervisorctl takes seconds
        # to start; the engine's own timing is checked in module_utils' tests.
        assert 0.5 <= fast['waited'] < slow['waited'] and slow['waited'] >= 5.0, (fast, slow)
        for p in workers.values():
            assert p.wait(5) == 0

        # a second run finds them stopped
        with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
            result = run_module({'manager': 'supervisor', 'services': ['app:fast'], 'supervisorctl_path': str(ctl)})
        assert result['changed'] is False
        assert result['services'][0]['outcome'] == 'already_stopped'
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
