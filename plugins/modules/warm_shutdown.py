#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: warm_shutdown
short_description: Stop Celery workers or Beat with a warm shutdown and wait until every process has exited
version_added: 1.0.0
description:
  - Stops one or more Celery worker or Celery Beat services managed by C(systemd) or C(supervisord) so that the
    process manager does not start them again, makes sure SIGTERM reaches the worker's main process only, and
    waits until the main process and every child process have exited.
  - The stop goes through the process manager (C(systemctl stop --no-block) or a background C(supervisorctl stop)),
    so that C(Restart=always) or C(autorestart=true) does not start the service again. The module itself watches
    the processes and escalates when the warm-shutdown window ends, according to O(on_timeout).
  - Several services are stopped at once and waited for in one loop, so the time taken is that of the slowest
    service, not the sum.
  - Processes are tracked by PID and start time, so a PID reused by an unrelated process is never waited for or
    signalled. For C(systemd) the unit's control group is re-read at every poll, so children spawned late are
    waited for too.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode the module discovers the services and reports what it would stop, and sends nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - Linux only; it reads C(/proc) and the cgroup file systems.
options:
  manager:
    description:
      - The process manager that runs the services.
    type: str
    required: true
    choices: [systemd, supervisor]
  services:
    description:
      - The services to stop.
      - For O(manager=systemd), unit names such as V(myapp-worker-default.service); the C(.service) suffix may be
        left out.
      - For O(manager=supervisor), program names as C(supervisorctl status) shows them, V(group:program) for a
        program in a group, for example V(myapp:myapp-worker-default). Groups and wildcards are not accepted.
      - Names listed twice are handled once.
    type: list
    elements: str
    required: true
  timeout:
    description:
      - The warm-shutdown window in seconds, at least V(1) - how long the running tasks get to finish.
      - The manager's own stop timeout (C(TimeoutStopSec=) or supervisor's C(stopwaitsecs)) should be at least
        as long, or the manager kills the remaining processes first. The module warns when a unit's
        C(TimeoutStopSec=) is shorter.
    type: int
    default: 600
  on_timeout:
    description:
      - What to do with a service whose processes are still running when O(timeout) has passed.
      - V(fail) leaves it to the process manager, whose stop is still under way, and fails, naming the service,
        how long it waited and which PIDs are alive.
      - V(cold) sends SIGQUIT to the main process (Celery cold shutdown, which honours
        C(worker_soft_shutdown_timeout)), waits O(cold_timeout) seconds, then sends SIGKILL to every remaining
        process.
      - V(kill) sends SIGKILL to every remaining process, the main process first.
    type: str
    default: fail
    choices: [fail, cold, kill]
  cold_timeout:
    description:
      - With O(on_timeout=cold), how many seconds the cold shutdown gets before SIGKILL, at least V(1).
    type: int
    default: 30
  poll_interval:
    description:
      - Seconds between two checks of the processes, from V(0.005) to V(0.25). Where the kernel supports pidfds
        an exit is noticed at once anyway.
    type: float
    default: 0.05
  systemctl_path:
    description:
      - Path of C(systemctl). By default it is looked up on E(PATH).
      - Only used with O(manager=systemd).
    type: path
  supervisorctl_path:
    description:
      - Path of C(supervisorctl). By default it is looked up on E(PATH), then in C(/usr/bin) and C(/usr/local/bin).
      - Only used with O(manager=supervisor).
    type: path
  supervisor_config:
    description:
      - Configuration file of C(supervisorctl), passed to it as C(-c).
      - Only used with O(manager=supervisor).
    type: path
notes:
  - Why SIGTERM must reach the main process only - in a Celery prefork worker only the main process turns SIGTERM
    into a warm shutdown (stop consuming, let the running tasks finish, then exit). The pool children reset SIGTERM
    to its default action, so a SIGTERM that reaches them kills the tasks they are running at once.
  - For O(manager=systemd) the unit must have C(KillMode=mixed) (recommended; SIGTERM to the main process, SIGKILL
    to whatever is left after C(TimeoutStopSec=)), or C(process) or C(none). With C(KillMode=control-group), the
    systemd default, C(systemctl stop) sends SIGTERM to every process of the unit, so the module refuses to stop
    a running unit with it, before sending anything to any service.
  - For O(manager=supervisor) the program must run the worker directly (no shell wrapper), with C(stopsignal=TERM),
    C(stopasgroup=false) and C(killasgroup=true), and C(stopwaitsecs) at least O(timeout). The module cannot read
    these settings through C(supervisorctl) and does not check them.
  - A service that is not running is reported as V(already_stopped); the module still asks the manager to stop it,
    which cancels a pending automatic restart.
  - Signals the module sends itself (SIGQUIT, SIGKILL) need the privileges of the service's user or root, so the
    module is normally run with C(become=true).
  - The module fails, never reporting success, while any process of a service remains.
seealso:
  - module: ansible.builtin.systemd_service
  - module: community.general.supervisorctl
  - name: Celery worker shutdown
    description: How Celery workers handle warm, soft and cold shutdown.
    link: https://docs.celeryq.dev/en/stable/userguide/workers.html#stopping-the-worker
requirements:
  - Linux with C(/proc).
  - C(systemctl) for O(manager=systemd); C(supervisorctl) for O(manager=supervisor).
author:
  - celeryops maintainers (@celeryops)
"""

EXAMPLES = r"""
- name: Drain the workers before switching the release (cold shutdown after 15 minutes)
  celeryops.celery.warm_shutdown:
    manager: systemd
    services:
      - myapp-worker-default.service
      - myapp-worker-emails.service
    timeout: 900
    on_timeout: cold
    cold_timeout: 60
  become: true
  register: drain

- name: Show how long each worker took
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.outcome }} after {{ item.waited }}s"
  loop: "{{ drain.services }}"

- name: Stop Celery Beat and a worker run by supervisor, killing what is left after 5 minutes
  celeryops.celery.warm_shutdown:
    manager: supervisor
    services:
      - myapp:myapp-beat
      - myapp:myapp-worker-default
    timeout: 300
    on_timeout: kill
    supervisor_config: /etc/supervisor/supervisord.conf
  become: true

- name: See what would be stopped
  celeryops.celery.warm_shutdown:
    manager: systemd
    services: [myapp-worker-default]
  check_mode: true
  register: would_stop
"""

RETURN = r"""
services:
  description: One entry per service, in the order given (names listed twice appear once).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The service name; for systemd the unit name with its C(.service) suffix.
      returned: always
      type: str
      sample: myapp-worker-default.service
    main_pid:
      description: PID of the main process when the module started, V(null) when there was none.
      returned: always
      type: int
      sample: 4242
    processes_at_start:
      description: PIDs of all processes of the service when the module started (main process and children).
      returned: always
      type: list
      elements: int
      sample: [4242, 4250, 4251]
    waited:
      description: Seconds from the stop until the last process had exited (or until the module gave up),
        rounded to 3 decimals; V(0.0) for a service that was not running.
      returned: always
      type: float
      sample: 12.345
    outcome:
      description:
        - V(warm) - every process exited within O(timeout).
        - V(cold) - every process exited after the SIGQUIT of O(on_timeout=cold), without SIGKILL.
        - V(killed) - SIGKILL was sent to the processes still running.
        - V(already_stopped) - the service had no process.
        - V(would_stop) - check mode, the service is running.
        - V(timeout) - only in a failure with O(on_timeout=fail), processes were left running.
        - V(null) - only in a failure, when the module stopped before this service was handled.
      returned: always
      type: str
      sample: warm
    remaining:
      description: PIDs still alive when the module finished; always empty on success, since the module fails
        while any process remains.
      returned: always
      type: list
      elements: int
      sample: []
elapsed:
  description: Seconds the module took in all, rounded to 3 decimals.
  returned: always
  type: float
  sample: 12.401
"""

import os
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, is_executable
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import C_LOCALE, WarmShutdownError
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.engine import WarmShutdown
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.supervisor import SupervisorManager
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.systemd import SystemdManager
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.tracking import ProcessOps

SUPERVISORCTL_FALLBACK_DIRS = ('/usr/bin', '/usr/local/bin')


def find_executable(module, name, path, fallback_dirs=()):
    """The given path (which must be executable), else name on PATH, else in fallback_dirs."""
    option = '%s_path' % name
    if path:
        if os.path.isfile(path) and is_executable(path):
            return path
        module.fail_json(msg='%s: %s does not exist or is not executable' % (option, path))
    found = module.get_bin_path(name)
    if found:
        return found
    for directory in fallback_dirs:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and is_executable(candidate):
            return candidate
    module.fail_json(msg='%s was not found on PATH%s; install it or set %s'
                     % (name, ' nor in %s' % ', '.join(fallback_dirs) if fallback_dirs else '', option))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manager=dict(type='str', required=True, choices=['systemd', 'supervisor']),
            services=dict(type='list', elements='str', required=True),
            timeout=dict(type='int', default=600),
            on_timeout=dict(type='str', default='fail', choices=['fail', 'cold', 'kill']),
            cold_timeout=dict(type='int', default=30),
            poll_interval=dict(type='float', default=0.05),
            systemctl_path=dict(type='path'),
            supervisorctl_path=dict(type='path'),
            supervisor_config=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    params = module.params

    def run_command(args):
        return module.run_command(args, environ_update=C_LOCALE)

    ops = ProcessOps()
    if params['manager'] == 'systemd':
        systemctl = find_executable(module, 'systemctl', params['systemctl_path'])
        manager = SystemdManager(run_command, systemctl, ops)
    else:
        supervisorctl = find_executable(module, 'supervisorctl', params['supervisorctl_path'], SUPERVISORCTL_FALLBACK_DIRS)
        manager = SupervisorManager(run_command, supervisorctl, ops, config=params['supervisor_config'])

    start = time.monotonic()
    try:
        # The engine checks the settings and the services before it sends anything.
        engine = WarmShutdown(manager, ops, timeout=params['timeout'], on_timeout=params['on_timeout'],
                              cold_timeout=params['cold_timeout'], poll_interval=params['poll_interval'],
                              warn=module.warn)
        result = engine.run(params['services'], check_mode=module.check_mode)
    except WarmShutdownError as e:
        module.fail_json(msg=e.msg, changed=e.changed, services=e.services, elapsed=round(time.monotonic() - start, 3))
    except Exception as e:  # pylint: disable=broad-except
        module.fail_json(msg='%s services %s: unexpected error: %s' % (params['manager'], ', '.join(params['services']), to_native(e)),
                         exception=traceback.format_exc(), elapsed=round(time.monotonic() - start, 3))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
