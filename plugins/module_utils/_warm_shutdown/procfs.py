# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read-only views of /proc and the cgroup file systems."""

import os

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import to_text


class ProcStat:
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
    text = to_text(data)
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


class ProcFS:
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
        rel = to_text(control_group).strip().strip('/')
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
