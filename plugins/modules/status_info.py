#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: status_info
short_description: Report what the Celery workers and Beat of a host are doing, as their manager and the broker see it
version_added: 1.1.0
description:
  - Reads, on the managed host, each worker's state, main PID and uptime from its process manager (systemd or
    supervisor), the release the host runs (the targets of the C(current) and C(previous) links), and whether Beat
    runs here.
  - Then asks the workers through the broker, with the app's own Python and environment, as the app's user - whether
    each answers ping, which queues it consumes (the broker's view, not the configuration), and which tasks it runs
    and holds reserved.
  - Changes nothing. It does not fail for a worker that is down or silent; it reports it in RV(problems), one line
    per problem that names the worker, so that a play can show the whole fleet before it fails.
  - When the broker cannot be reached, that is the one problem reported for the broker, and the workers are not
    called silent, since nobody could ask them.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The module changes nothing, so it reads the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  manager:
    description: The process manager that runs the workers and Beat.
    type: str
    choices: [systemd, supervisor]
    required: true
  workers:
    description:
      - The workers configured for this host, each name (its node is V(<name>@<host name>)) mapped to its systemd unit
        or its supervisor program as V(group:program).
    type: dict
    required: true
  beat_service:
    description: The systemd unit or supervisor program of Beat. Its state is reported, not judged - where Beat must run
      is the fleet's question.
    type: str
  beat_lock_holder_file:
    description:
      - Where a Beat run with RedBeat's lock (C(celery_beat_hosts)) writes its PID once it holds the lock. With it, a
        running Beat is reported as holding the lock (it ticks) or waiting for it (it stands by).
    type: path
  flower_service:
    description: The systemd unit or supervisor program of Flower, reported like O(beat_service).
    type: str
  app:
    description: The Celery app, the value of C(celery --app).
    type: str
    required: true
  chdir:
    description:
      - The directory the workers run in (the app's code). When it is a link, as the release playbook makes it, its
        target is the current release, and the target of the C(previous) link next to it the previous one.
    type: path
    required: true
  python:
    description: The Python of the app's virtualenv, which holds Celery.
    type: path
    required: true
  env_file:
    description: The app's environment file (the broker URL), read by the app's user's shell as the workers read it.
    type: path
    required: true
  user:
    description: The app's user, who asks the workers.
    type: str
    required: true
  broker_use_ssl:
    description: The broker TLS settings the workers get on their command line, as Celery's C(broker_use_ssl).
    type: dict
  timeout:
    description: Seconds to wait for the broker, and for the workers' replies to each question.
    type: float
    default: 5
notes:
  - The broker URL is shown only as kombu masks it, without its password.
author:
  - celeryops maintainers (@celeryops)
"""

EXAMPLES = r"""
- name: Read the state of the host's workers
  celeryops.celery.status_info:
    manager: systemd
    workers:
      default: proj-worker-default.service
    beat_service: proj-beat.service
    app: proj
    chdir: /srv/proj/current
    python: /srv/proj/current/.venv/bin/python
    env_file: /etc/proj/celery.env
    user: proj
  register: celery_status

- name: Fail when a worker is down or silent
  ansible.builtin.fail:
    msg: "{{ celery_status.problems | join('; ') }}"
  when: celery_status.problems | length > 0
"""

RETURN = r"""
hostname:
  description: The host name that the workers' node names end with.
  returned: always
  type: str
  sample: web1
manager:
  description: The process manager, as given.
  returned: always
  type: str
  sample: systemd
release:
  description: The release the host runs, and the previous one (names of the links' targets), or null.
  returned: always
  type: dict
  sample: {"current": "v42", "previous": "v41"}
broker:
  description: The broker as the app sees it.
  returned: always
  type: dict
  contains:
    url:
      description: The broker URL, its password masked.
      type: str
    reachable:
      description: Whether a connection to the broker opened.
      type: bool
    error:
      description: Why not, when it did not.
      type: str
beat:
  description:
    - Beat's state on this host (V(running) where it runs), or null without O(beat_service).
    - Its C(lock) is V(held) for a Beat that holds RedBeat's lock and ticks, V(waiting) for one that
      stands by, and null for a Beat without the lock or not running.
  returned: always
  type: dict
  sample: {"service": "proj-beat.service", "state": "running", "pid": 812, "lock": "held"}
flower:
  description: Flower's state on this host, as O(beat_service)'s, or null without O(flower_service).
  returned: always
  type: dict
  sample: {"service": "proj-flower.service", "state": "running", "pid": 905}
workers:
  description: One entry per configured worker.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The worker's name.
      type: str
    node:
      description: Its node name.
      type: str
      sample: default@web1
    service:
      description: Its unit or program.
      type: str
    state:
      description: V(running), or what the manager says instead (e.g. V(inactive), V(failed), V(STOPPED)).
      type: str
    pid:
      description: Its main PID, 0 when not running.
      type: int
    uptime_seconds:
      description: Seconds since its main process started, or null.
      type: int
    answers_ping:
      description: Whether it answered ping through the broker; null when the broker could not be reached.
      type: bool
    queues:
      description: The queues the broker says it consumes; null when it did not answer.
      type: list
      elements: str
    active:
      description: The tasks it runs now (id, name, pool process, seconds since each started).
      type: list
      elements: dict
    reserved:
      description: The tasks it holds reserved (prefetched, not started), id and name.
      type: list
      elements: dict
problems:
  description: One line per worker down or silent, or for the broker when it cannot be reached; empty when all is well.
  returned: always
  type: list
  elements: str
  sample: ["worker default (default@web1) is not running: systemd says inactive"]
"""

import json
import os
import socket

from ansible.module_utils.basic import AnsibleModule

C_LOCALE = {'LANG': 'C', 'LC_ALL': 'C', 'LC_MESSAGES': 'C'}

# Run with the app's Python as the app's user: imports the app, opens the
# broker connection, then asks the nodes. Prints one JSON object.
INSPECT = r"""
import json, sys, time


def report(args):
    out = {}
    try:
        from celery.app.utils import find_app
        app = find_app(args["app"])
    except Exception as exc:
        out["error"] = "the app %r failed to import: %s: %s" % (args["app"], type(exc).__name__, exc)
        return out
    if args.get("broker_use_ssl"):
        app.conf.broker_use_ssl = args["broker_use_ssl"]
    conn = app.connection_for_write(connect_timeout=args["timeout"])
    out["url"] = conn.as_uri()
    try:
        conn.ensure_connection(max_retries=1, interval_start=1, interval_max=1, timeout=args["timeout"])
    except Exception as exc:
        out["broker_error"] = "%s: %s" % (type(exc).__name__, exc)
        return out
    inspect = app.control.inspect(destination=args["nodes"], timeout=args["timeout"], connection=conn,
                                  limit=len(args["nodes"]))
    now = time.time()
    out["ping"] = sorted(inspect.ping() or {})
    out["queues"] = {node: [q.get("name") for q in queues or []]
                     for node, queues in (inspect.active_queues() or {}).items()}
    out["active"] = {node: [{"id": t.get("id"), "name": t.get("name"), "worker_pid": t.get("worker_pid"),
                             "seconds": round(now - t["time_start"], 1) if t.get("time_start") else None}
                            for t in tasks or []]
                     for node, tasks in (inspect.active() or {}).items()}
    out["reserved"] = {node: [{"id": t.get("id"), "name": t.get("name")} for t in tasks or []]
                       for node, tasks in (inspect.reserved() or {}).items()}
    conn.release()
    return out


print(json.dumps(report(json.loads(sys.argv[1]))))
"""


class StatusReader(object):
    """What the manager, the links and the broker say; run_command(args) is
    AnsibleModule.run_command in the C locale."""

    def __init__(self, run_command, params, hostname):
        self.run = run_command
        self.params = params
        self.hostname = hostname

    def service_state(self, service):
        """(state, pid): V(running) and the main PID, or the manager's word and 0."""
        if self.params['manager'] == 'systemd':
            rc, out, err = self.run(['systemctl', 'show', '-p', 'ActiveState', '-p', 'SubState', '-p', 'MainPID', service])
            fields = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
            pid = int(fields.get('MainPID') or 0)
            if fields.get('ActiveState') == 'active' and fields.get('SubState') == 'running' and pid:
                return 'running', pid
            return ' '.join(v for v in (fields.get('ActiveState'), fields.get('SubState')) if v) or (err.strip() or 'unknown'), 0
        rc, out, err = self.run(['supervisorctl', 'status', service])
        words = out.split()
        state = words[1] if len(words) > 1 else (err.strip() or out.strip() or 'unknown')
        if state == 'RUNNING' and len(words) > 3 and words[2] == 'pid':
            return 'running', int(words[3].rstrip(','))
        return state, 0

    def uptime(self, pid):
        if not pid:
            return None
        rc, out, err = self.run(['ps', '-o', 'etimes=', '-p', str(pid)])
        out = out.strip()
        return int(out) if rc == 0 and out.isdigit() else None

    def release(self):
        def target(path):
            return os.path.basename(os.readlink(path).rstrip('/')) if os.path.islink(path) else None
        chdir = self.params['chdir'].rstrip('/')
        return {'current': target(chdir), 'previous': target(os.path.join(os.path.dirname(chdir), 'previous'))}

    def inspect(self, nodes):
        p = self.params
        args = json.dumps({'app': p['app'], 'nodes': nodes, 'timeout': p['timeout'],
                           'broker_use_ssl': p['broker_use_ssl']})
        rc, out, err = self.run(['runuser', '-u', p['user'], '--', 'sh', '-c', 'set -a; . "$0"; set +a; cd "$1" && shift && exec "$@"',
                                 p['env_file'], p['chdir'], p['python'], '-c', INSPECT, args])
        for line in reversed(out.splitlines()):
            if line.startswith('{'):
                return json.loads(line)
        last = (err.strip().splitlines() or ['exit code %d' % rc])[-1]
        return {'error': 'the status check could not run with %s: %s' % (p['python'], last)}

    def read(self):
        workers, problems = [], []
        for name, service in self.params['workers'].items():
            state, pid = self.service_state(service)
            workers.append({'name': name, 'node': '%s@%s' % (name, self.hostname),
                            'service': service, 'state': state, 'pid': pid, 'uptime_seconds': self.uptime(pid),
                            'answers_ping': None, 'queues': None, 'active': [], 'reserved': []})
        answer = self.inspect([w['node'] for w in workers]) if workers else {}
        broker = {'url': answer.get('url'), 'reachable': 'ping' in answer, 'error': answer.get('broker_error') or answer.get('error')}
        if broker['error'] and broker['url']:
            problems.append('the broker %s could not be asked about the workers: %s' % (broker['url'], broker['error']))
        elif broker['error']:
            problems.append('the workers could not be asked: %s' % broker['error'])
        for worker in workers:
            node = worker['node']
            if broker['reachable']:
                worker['answers_ping'] = node in answer['ping']
                worker['queues'] = answer['queues'].get(node)
                worker['active'] = answer['active'].get(node, [])
                worker['reserved'] = answer['reserved'].get(node, [])
            if worker['state'] != 'running':
                problems.append('worker %s (%s) is not running: %s says %s' % (worker['name'], node, self.params['manager'], worker['state']))
            elif worker['answers_ping'] is False:
                problems.append('worker %s (%s) runs (pid %d) but does not answer ping within %g s'
                                % (worker['name'], node, worker['pid'], self.params['timeout']))
        return {'hostname': self.hostname, 'manager': self.params['manager'], 'release': self.release(), 'broker': broker,
                'beat': self.beat(), 'flower': self.single_service('flower_service'),
                'workers': workers, 'problems': problems}

    def beat(self):
        beat = self.single_service('beat_service')
        if beat is not None:
            beat['lock'] = self.beat_lock(beat['pid']) if beat['state'] == 'running' else None
        return beat

    def beat_lock(self, pid):
        """V(held) when this Beat took RedBeat's lock, V(waiting) when it runs
        with the lock's wrapper and waits for it, None when it runs without.
        RedBeat's lock holds a random token: the wrapper names its holder."""
        if not any(os.path.basename(arg) == 'celery_beat_lock' for arg in self.cmdline(pid)):
            return None
        try:
            with open(self.params['beat_lock_holder_file'] or '') as handle:
                holder = json.load(handle).get('pid')
        except (OSError, ValueError, AttributeError):
            holder = None
        return 'held' if holder == pid else 'waiting'

    @staticmethod
    def cmdline(pid):
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                return [arg.decode('utf-8', 'replace') for arg in handle.read().split(b'\0') if arg]
        except OSError:
            return []

    def single_service(self, param):
        """The state of a service the fleet runs on one host (Beat, Flower), or None when not asked."""
        if not self.params[param]:
            return None
        state, pid = self.service_state(self.params[param])
        return {'service': self.params[param], 'state': state, 'pid': pid}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manager=dict(type='str', required=True, choices=['systemd', 'supervisor']),
            workers=dict(type='dict', required=True),
            beat_service=dict(type='str'),
            beat_lock_holder_file=dict(type='path'),
            flower_service=dict(type='str'),
            app=dict(type='str', required=True),
            chdir=dict(type='path', required=True),
            python=dict(type='path', required=True),
            env_file=dict(type='path', required=True),
            user=dict(type='str', required=True),
            broker_use_ssl=dict(type='dict'),
            timeout=dict(type='float', default=5),
        ),
        supports_check_mode=True,
    )
    if module.params['timeout'] <= 0:
        module.fail_json(msg='timeout must be above 0 seconds; got %s' % module.params['timeout'])

    def run_command(args):
        return module.run_command(args, environ_update=C_LOCALE)

    result = StatusReader(run_command, module.params, socket.gethostname()).read()
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
