# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Processes tracked by PID and start time, so that a reused PID is never
signalled or waited for; pidfds where the kernel has them."""

import errno
import os
import select
import signal
import time

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.common import WarmShutdownError, signal_name
from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.procfs import ProcFS


class TrackedProcess:
    """A process identified by PID and start time, so a reused PID is never mistaken for it."""

    def __init__(self, pid, starttime, pidfd=None):
        self.pid = pid
        self.starttime = starttime
        self.pidfd = pidfd
        self.exited = False

    def __repr__(self):
        return 'TrackedProcess(pid=%r, starttime=%r, exited=%r)' % (self.pid, self.starttime, self.exited)


class ProcessOps:
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
