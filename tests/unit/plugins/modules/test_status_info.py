# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""status_info with the manager, ps and the app's inspect answer mocked:
what it reports, and which problems it names."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os

from unittest import mock

import pytest

from ansible.module_utils import basic

from ansible_collections.celeryops.celery.plugins.modules import status_info as module

HOST = 'web1'
PARAMS = {'manager': 'systemd', 'workers': {'default': 'proj-worker-default.service', 'io': 'proj-worker-io.service'},
          'beat_service': 'proj-beat.service', 'flower_service': 'proj-flower.service', 'app': 'proj', 'chdir': '/srv/proj/current',
          'python': '/srv/proj/current/.venv/bin/python', 'env_file': '/etc/proj/celery.env', 'user': 'proj',
          'broker_use_ssl': None, 'timeout': 5.0, 'beat_lock_holder_file': None}
ALL_UP = {'url': 'amqp://proj:**@broker:5672/proj', 'ping': ['default@web1', 'io@web1'],
          'queues': {'default@web1': ['celery'], 'io@web1': ['io', 'io.low']},
          'active': {'default@web1': [{'id': 't1', 'name': 'proj.tasks.long', 'worker_pid': 12, 'seconds': 3.2}],
                     'io@web1': []},
          'reserved': {'default@web1': [], 'io@web1': [{'id': 't2', 'name': 'proj.tasks.fetch'}]}}


class FakeHost(object):
    """Answers the commands status_info runs, and records them."""

    def __init__(self, systemd=None, supervisor=None, inspect='all up', inspect_rc=0, inspect_err=''):
        self.systemd = systemd or {}
        self.supervisor = supervisor or {}
        # What the app's check prints: ALL_UP by default, nothing with None.
        self.inspect = ALL_UP if inspect == 'all up' else inspect
        self.inspect_rc, self.inspect_err = inspect_rc, inspect_err
        self.calls = []

    def __call__(self, args):
        self.calls.append(args)
        if args[0] == 'systemctl':
            state, sub, pid = self.systemd.get(args[-1], ('inactive', 'dead', 0))
            return 0, 'ActiveState=%s\nSubState=%s\nMainPID=%d\n' % (state, sub, pid), ''
        if args[0] == 'supervisorctl':
            line = self.supervisor.get(args[-1], '%s: ERROR (no such process)' % args[-1])
            return (0 if 'RUNNING' in line else 3), line + '\n', ''
        if args[0] == 'ps':
            return 0, '    3725\n', ''
        if args[0] == 'runuser':
            out = ('some warning\n' + json.dumps(self.inspect) + '\n') if self.inspect is not None else ''
            return self.inspect_rc, out, self.inspect_err
        raise AssertionError('unexpected command %r' % (args,))


# The module's arguments (PARAMS as a task would give them).
ARGS = {key: value for key, value in PARAMS.items() if value is not None}
RUNNING = {'proj-worker-default.service': ('active', 'running', 101), 'proj-worker-io.service': ('active', 'running', 102),
           'proj-beat.service': ('active', 'running', 103)}


# Beat's command line, by PID (the module reads /proc).
CMDLINES = {}


@pytest.fixture(autouse=True)
def cmdlines(monkeypatch):
    CMDLINES.clear()
    monkeypatch.setattr(module.StatusReader, 'cmdline', staticmethod(lambda pid: CMDLINES.get(pid, [])))
    return CMDLINES


def read(fake, **params):
    return module.StatusReader(fake, dict(PARAMS, **params), HOST).read()


def test_every_worker_up_is_reported_with_what_the_broker_says():
    status = read(FakeHost(systemd=RUNNING))
    assert status['problems'] == []
    assert status['broker'] == {'url': 'amqp://proj:**@broker:5672/proj', 'reachable': True, 'error': None}
    default, io = status['workers']
    assert default == {'name': 'default', 'node': 'default@web1', 'service': 'proj-worker-default.service',
                       'state': 'running', 'pid': 101, 'uptime_seconds': 3725, 'answers_ping': True, 'queues': ['celery'],
                       'active': ALL_UP['active']['default@web1'], 'reserved': []}
    assert io['queues'] == ['io', 'io.low'] and io['reserved'] == [{'id': 't2', 'name': 'proj.tasks.fetch'}]
    assert status['beat'] == {'service': 'proj-beat.service', 'state': 'running', 'pid': 103, 'lock': None}
    # Flower is not running on this host: reported, not a problem of the host.
    assert status['flower'] == {'service': 'proj-flower.service', 'state': 'inactive dead', 'pid': 0}


def test_a_stopped_worker_is_a_problem_that_names_it():
    systemd = dict(RUNNING, **{'proj-worker-io.service': ('inactive', 'dead', 0)})
    answer = dict(ALL_UP, ping=['default@web1'], queues={'default@web1': ['celery']})
    status = read(FakeHost(systemd=systemd, inspect=answer))
    assert status['problems'] == ['worker io (io@web1) is not running: systemd says inactive dead']
    io = status['workers'][1]
    assert io['pid'] == 0 and io['uptime_seconds'] is None and io['answers_ping'] is False and io['queues'] is None


def test_a_running_worker_that_does_not_answer_is_a_problem_that_names_it():
    answer = dict(ALL_UP, ping=['io@web1'])
    status = read(FakeHost(systemd=RUNNING, inspect=answer))
    assert status['problems'] == ['worker default (default@web1) runs (pid 101) but does not answer ping within 5 s']


def test_a_broker_that_cannot_be_reached_is_the_one_problem_and_no_worker_is_called_silent():
    answer = {'url': 'amqp://proj:**@broker:5672/proj', 'broker_error': 'OperationalError: [Errno 111] Connection refused'}
    status = read(FakeHost(systemd=RUNNING, inspect=answer))
    assert status['problems'] == ['the broker amqp://proj:**@broker:5672/proj could not be asked about the workers: '
                                  'OperationalError: [Errno 111] Connection refused']
    assert status['broker']['reachable'] is False
    assert [w['answers_ping'] for w in status['workers']] == [None, None]
    assert [w['state'] for w in status['workers']] == ['running', 'running']


def test_an_app_that_fails_to_import_or_a_check_that_cannot_run_says_why():
    status = read(FakeHost(systemd=RUNNING, inspect={'error': "the app 'proj' failed to import: ImportError: x"}))
    assert status['problems'] == ["the workers could not be asked: the app 'proj' failed to import: ImportError: x"]
    status = read(FakeHost(systemd=RUNNING, inspect=None, inspect_rc=127, inspect_err='sh: 1: exec: python: not found\n'))
    assert status['problems'][0].endswith('the status check could not run with /srv/proj/current/.venv/bin/python: '
                                          'sh: 1: exec: python: not found')


def test_supervisor_states_and_pids_are_read_from_its_status_line():
    supervisor = {'proj:proj-worker-default': 'proj:proj-worker-default   RUNNING   pid 2201, uptime 1:02:05',
                  'proj:proj-worker-io': 'proj:proj-worker-io        FATAL     Exited too quickly (process log may have details)'}
    status = read(FakeHost(supervisor=supervisor), manager='supervisor',
                  workers={'default': 'proj:proj-worker-default', 'io': 'proj:proj-worker-io'}, beat_service='proj-beat')
    assert [(w['state'], w['pid']) for w in status['workers']] == [('running', 2201), ('FATAL', 0)]
    assert status['problems'] == ['worker io (io@web1) is not running: supervisor says FATAL']
    assert status['beat'] == {'service': 'proj-beat', 'state': 'ERROR', 'pid': 0, 'lock': None}


LOCKED_BEAT = ['/srv/proj/.venv/bin/python', '/usr/local/libexec/celeryops/celery_beat_lock', '--lock-timeout=30',
               '--key-prefix=redbeat:proj', '--holder-file=/var/lib/proj/beat-lock-holder', '--', '--app=proj', 'beat']


@pytest.mark.parametrize('holder, lock', [({'pid': 103, 'since': 1.5}, 'held'), ({'pid': 977, 'since': 1.5}, 'waiting'),
                                          (None, 'waiting'), ('not json', 'waiting')])
def test_a_beat_with_the_lock_is_told_holding_from_waiting_by_the_holder_file(tmp_path, cmdlines, holder, lock):
    path = tmp_path / 'beat-lock-holder'
    if holder is not None:
        path.write_text(holder if isinstance(holder, str) else json.dumps(holder))
    cmdlines[103] = LOCKED_BEAT
    status = read(FakeHost(systemd=RUNNING), beat_lock_holder_file=str(path))
    assert status['beat'] == {'service': 'proj-beat.service', 'state': 'running', 'pid': 103, 'lock': lock}


def test_a_beat_without_the_lock_has_no_lock_whatever_the_holder_file_says(tmp_path, cmdlines):
    path = tmp_path / 'beat-lock-holder'
    path.write_text(json.dumps({'pid': 103, 'since': 1.5}))
    cmdlines[103] = ['/srv/proj/.venv/bin/celery', '--app=proj', 'beat']
    assert read(FakeHost(systemd=RUNNING), beat_lock_holder_file=str(path))['beat']['lock'] is None


def test_the_app_is_asked_as_its_user_with_its_environment_and_every_node():
    fake = FakeHost(systemd=RUNNING)
    read(fake, broker_use_ssl={'ssl_cert_reqs': 2})
    argv = [call for call in fake.calls if call[0] == 'runuser'][0]
    assert argv[:4] == ['runuser', '-u', 'proj', '--']
    assert argv[7:10] == ['/etc/proj/celery.env', '/srv/proj/current', '/srv/proj/current/.venv/bin/python']
    assert json.loads(argv[-1]) == {'app': 'proj', 'nodes': ['default@web1', 'io@web1'], 'timeout': 5.0,
                                    'broker_use_ssl': {'ssl_cert_reqs': 2}}


def test_the_release_links_are_read(tmp_path):
    releases = tmp_path / 'releases'
    for name in ('v1', 'v2'):
        (releases / name).mkdir(parents=True)
    os.symlink(str(releases / 'v2'), str(tmp_path / 'current'))
    os.symlink(str(releases / 'v1'), str(tmp_path / 'previous'))
    status = read(FakeHost(systemd=RUNNING), chdir=str(tmp_path / 'current'))
    assert status['release'] == {'current': 'v2', 'previous': 'v1'}
    plain = tmp_path / 'site' / 'current'
    plain.mkdir(parents=True)
    assert read(FakeHost(systemd=RUNNING), chdir=str(plain))['release'] == {'current': None, 'previous': None}


def test_the_module_changes_nothing_in_check_mode_and_runs_in_the_c_locale(run_main):
    fake = FakeHost(systemd=RUNNING)
    calls = []
    with mock.patch.object(basic.AnsibleModule, 'run_command', lambda self, argv, **kw: calls.append(kw) or fake(argv)), \
            mock.patch.object(module.socket, 'gethostname', lambda: HOST):
        out = run_main(module, dict(ARGS, _ansible_check_mode=True))
    assert not out['failed'] and out['changed'] is False and out['problems'] == [], out
    assert out['hostname'] == HOST and out['manager'] == 'systemd'
    assert calls and all(kw.get('environ_update', {}).get('LC_ALL') == 'C' for kw in calls)


def test_a_timeout_of_zero_is_refused_naming_it(run_main):
    out = run_main(module, dict(ARGS, timeout=0))
    assert out['failed'] and out['msg'] == 'timeout must be above 0 seconds; got 0.0'
