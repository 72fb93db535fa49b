# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import functools
import os
import signal

from unittest import mock

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown import supervisor
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.engine import WarmShutdown
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.systemd import SystemdManager
from ansible_collections.celeryops.celery.plugins.modules import warm_shutdown as module
from ansible_collections.celeryops.celery.tests.unit.plugins.fake_world import FakeSupervisorctl, FakeSystemctl, unit


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


@pytest.fixture
def managers(world):
    """The module run against the shared fake process world, with its fake systemctl and supervisorctl.

    The module's ProcessOps and engine get the world's processes, signals and
    clock, so a wait takes no real time.
    """
    systemctl = FakeSystemctl(world, path='/usr/bin/systemctl')
    supervisorctl = FakeSupervisorctl(world, path='/usr/bin/supervisorctl')
    tools = {'systemctl': systemctl, 'supervisorctl': supervisorctl}

    def run_command(self, args, **kwargs):
        return tools[os.path.basename(args[0])](args, **kwargs)

    def get_bin_path(self, arg, required=False, opt_dirs=None):
        return {'systemctl': '/usr/bin/systemctl', 'supervisorctl': '/usr/bin/supervisorctl'}.get(arg)

    with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json,
                             get_bin_path=get_bin_path, run_command=run_command):
        with mock.patch.object(module, 'ProcessOps', world.ops):
            with mock.patch.object(module, 'WarmShutdown', functools.partial(WarmShutdown, clock=world.clock)):
                with mock.patch.object(supervisor.subprocess, 'Popen', supervisorctl.popen):
                    yield systemctl, supervisorctl


def run_module(args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises((ExitJson, FailJson)) as exc:
            module.main()
    return exc.value.args[0]


@pytest.mark.parametrize('args,option', [
    ({'timeout': 0}, 'timeout'),
    ({'cold_timeout': 0}, 'cold_timeout'),
    ({'poll_interval': 5.0}, 'poll_interval'),
    ({'poll_interval': 0.0}, 'poll_interval'),
])
def test_numeric_options_are_checked(managers, args, option):
    result = run_module(dict({'manager': 'systemd', 'services': ['w']}, **args))
    assert result['failed']
    assert result['msg'].startswith(option + ' ')
    systemctl, supervisorctl = managers
    assert systemctl.calls == []
    assert supervisorctl.calls == []
    assert supervisorctl.popens == []


def test_services_must_not_be_empty(managers):
    result = run_module({'manager': 'systemd', 'services': []})
    assert result['failed']
    assert 'services' in result['msg']


def test_choices(managers):
    result = run_module({'manager': 'upstart', 'services': ['w']})
    assert result['failed']
    assert 'manager' in result['msg']
    result = run_module({'manager': 'systemd', 'services': ['w'], 'on_timeout': 'later'})
    assert result['failed']
    assert 'on_timeout' in result['msg']


def test_systemd_check_mode(world, managers):
    systemctl, dummy = managers
    world.spawn(100)
    world.spawn(101, 100)
    systemctl.units['myapp-worker-default.service'] = unit(100)
    systemctl.units['myapp-beat.service'] = unit(0, ActiveState='inactive', SubState='dead')
    result = run_module({'manager': 'systemd', 'services': ['myapp-worker-default', 'myapp-beat.service']},
                        check_mode=True)
    assert result['changed'] is True
    assert [(s['name'], s['outcome'], s['main_pid'], s['processes_at_start']) for s in result['services']] == [
        ('myapp-worker-default.service', 'would_stop', 100, [100, 101]),
        ('myapp-beat.service', 'already_stopped', None, []),
    ]
    assert [c[1] for c in systemctl.calls] == ['show', 'show']
    # parsed output must not depend on the target's locale
    for kwargs in systemctl.call_kwargs:
        assert kwargs['environ_update']['LANG'] == 'C'
        assert kwargs['environ_update']['LC_ALL'] == 'C'
    assert world.signals == []
    assert 100 in world.procs


def test_systemd_run(world, managers):
    systemctl, dummy = managers
    world.worker(100, [101, 102], 1.0)
    systemctl.units['w.service'] = unit(100)
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
    assert ['/usr/bin/systemctl', 'stop', '--no-block', 'w.service'] in systemctl.calls
    assert world.procs == {}


def test_systemd_unknown_unit(managers):
    systemctl, dummy = managers
    # No LoadError in "systemctl show": the message falls back to quoting LoadState.
    systemctl.load_error = False
    result = run_module({'manager': 'systemd', 'services': ['ghost']})
    assert result['failed']
    assert result['msg'].startswith('ghost.service: no such systemd unit (systemd says: LoadState=not-found)')
    assert result['changed'] is False


def test_systemd_kill_mode(world, managers):
    systemctl, dummy = managers
    world.spawn(100)
    systemctl.units['w.service'] = unit(100, KillMode='control-group')
    result = run_module({'manager': 'systemd', 'services': ['w']})
    assert result['failed']
    assert 'KillMode=control-group' in result['msg']
    assert 'KillMode=mixed' in result['msg']
    assert 'stop' not in [c[1] for c in systemctl.calls]


def test_systemd_timeout_fail(world, managers):
    systemctl, dummy = managers
    world.worker(100, [101], 3600.0)    # its task in flight outlasts the timeout
    systemctl.units['w.service'] = unit(100, TimeoutStopUSec='20min')
    result = run_module({'manager': 'systemd', 'services': ['w'], 'timeout': 1})
    assert result['failed']
    assert result['changed'] is True
    assert result['msg'].startswith('w.service: the warm shutdown did not finish within timeout=1s')
    assert 'PIDs still alive: 100, 101 (main PID 100)' in result['msg']
    assert 'on_timeout=cold' in result['msg']
    assert result['services'][0]['outcome'] == 'timeout'
    assert result['services'][0]['remaining'] == [100, 101]
    assert 1.0 <= result['services'][0]['waited'] < 2.0
    # the module itself sent nothing: the one SIGTERM came from "systemd", to the main process
    assert world.signals == [(100, signal.SIGTERM)]
    # the TimeoutStopSec warning is not raised: 20min >= 1s
    assert 'elapsed' in result


def test_systemd_timeout_kill(world, managers):
    systemctl, dummy = managers
    world.worker(100, [101], 3600.0)
    systemctl.units['w.service'] = unit(100)
    result = run_module({'manager': 'systemd', 'services': ['w'], 'timeout': 1, 'on_timeout': 'kill'})
    assert not result.get('failed')
    assert result['services'][0]['outcome'] == 'killed'
    assert world.signals == [(100, signal.SIGTERM), (100, signal.SIGKILL), (101, signal.SIGKILL)]


def test_systemctl_path_must_exist(managers, tmp_path):
    result = run_module({'manager': 'systemd', 'services': ['w'], 'systemctl_path': str(tmp_path / 'nope')})
    assert result['failed']
    assert result['msg'].startswith('systemctl_path: ')


def test_systemctl_path_is_used(managers, tmp_path):
    systemctl, dummy = managers
    exe = tmp_path / 'systemctl'
    exe.write_text('#!/bin/sh\n')
    exe.chmod(0o755)
    systemctl.path = str(exe)
    systemctl.units['w.service'] = unit(0, ActiveState='inactive')
    result = run_module({'manager': 'systemd', 'services': ['w'], 'systemctl_path': str(exe)})
    assert result['services'][0]['outcome'] == 'already_stopped'
    assert systemctl.calls[0][0] == str(exe)


def test_supervisor_run(world, managers):
    dummy, supervisorctl = managers
    world.worker(200, [201], 1.0)
    supervisorctl.programs['myapp:myapp-worker-default'] = dict(state='RUNNING', pid=200)
    result = run_module({'manager': 'supervisor', 'services': ['myapp:myapp-worker-default'],
                         'supervisor_config': '/etc/supervisor/supervisord.conf'})
    assert result['changed'] is True
    assert result['services'][0]['outcome'] == 'warm'
    assert result['services'][0]['processes_at_start'] == [200, 201]
    assert supervisorctl.calls[0] == ['/usr/bin/supervisorctl', '-c', '/etc/supervisor/supervisord.conf', 'status',
                                      'myapp:myapp-worker-default']
    popens = supervisorctl.popens
    assert popens[0].args == ['/usr/bin/supervisorctl', '-c', '/etc/supervisor/supervisord.conf', 'stop',
                              'myapp:myapp-worker-default']
    assert popens[0].kwargs['env']['LC_ALL'] == 'C'
    assert popens[0].returncode == 0


def test_supervisor_unknown(managers):
    result = run_module({'manager': 'supervisor', 'services': ['nope']})
    assert result['failed']
    assert result['msg'].startswith('nope: supervisor has no such program (supervisorctl says: nope: ERROR (no such process))')


def test_supervisorctl_not_found(managers):
    with mock.patch.object(basic.AnsibleModule, 'get_bin_path', lambda *a, **k: None):
        with mock.patch.object(module.os.path, 'isfile', lambda p: False):
            result = run_module({'manager': 'supervisor', 'services': ['w']})
    assert result['failed']
    assert result['msg'] == ('supervisorctl was not found on PATH nor in /usr/bin, /usr/local/bin; install it or set '
                             'supervisorctl_path')


def test_unexpected_error_is_reported_without_crashing(managers):
    with mock.patch.object(SystemdManager, 'discover', side_effect=RuntimeError('boom')):
        result = run_module({'manager': 'systemd', 'services': ['w']})
    assert result['failed']
    assert result['msg'] == 'systemd services w: unexpected error: boom'
    assert 'RuntimeError' in result['exception']


# --------------------------------------------------------------------------
# End to end: the real module code, real processes (FAKE_WORKER in
# fake_world.py, started by the real_workers fixture), a stand-in supervisorctl
# --------------------------------------------------------------------------

FAKE_SUPERVISORCTL = r'''#!%(python)s
import os, signal, sys, time

args = sys.argv[1:]
if args[:1] == ['-c']:
    args = args[2:]
cmd, name = args
with open(os.path.join(os.environ['FAKE_SUPERVISOR_DIR'], name)) as f:
    pid, go = f.read().split(None, 1)
pid = int(pid)


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
    open(go, 'w').close()
    os.kill(pid, signal.SIGTERM)          # stopsignal=TERM, stopasgroup=false
    while alive():
        time.sleep(0.05)
    print('%%s: stopped' %% name)
'''


def test_end_to_end_with_real_processes(tmp_path, monkeypatch, real_workers):
    import sys

    start, started = real_workers
    ctl = tmp_path / 'supervisorctl'
    ctl.write_text(FAKE_SUPERVISORCTL % {'python': sys.executable})
    ctl.chmod(0o755)
    state = tmp_path / 'state'
    state.mkdir()
    monkeypatch.setenv('FAKE_SUPERVISOR_DIR', str(state))
    for name, task in (('app:fast', 0.5), ('app:slow', 5)):
        p = start(name, task)
        (state / name).write_text('%d %s' % (p.pid, p.go))
    with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
        result = run_module({'manager': 'supervisor', 'services': ['app:fast', 'app:slow'],
                             'supervisorctl_path': str(ctl), 'supervisor_config': '/dev/null', 'timeout': 30})
    assert not result.get('failed'), result
    assert result['changed'] is True
    fast, slow = result['services']
    assert fast['outcome'] == slow['outcome'] == 'warm'
    assert fast['main_pid'] == started['app:fast'].pid
    assert len(fast['processes_at_start']) == 4     # main, 2 children, 1 grandchild
    assert fast['remaining'] == slow['remaining'] == []
    # Each stop waited for its tasks in flight (they run from the stop, and
    # the exit codes below say they ran to their end). No upper bound: on a
    # loaded machine a supervisorctl takes seconds to start; no exact lower
    # one either: the engine's clock starts a moment after the stop.
    assert 0.4 <= fast['waited'] < slow['waited'] and slow['waited'] >= 4.0, (fast, slow)
    for p in started.values():
        assert p.wait(5) == 0

    # a second run finds them stopped
    with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
        result = run_module({'manager': 'supervisor', 'services': ['app:fast'], 'supervisorctl_path': str(ctl)})
    assert result['changed'] is False
    assert result['services'][0]['outcome'] == 'already_stopped'
