# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures shared by the unit tests of the warm_shutdown module and its engine (see fake_world.py)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import signal
import subprocess
import sys

import pytest

from ansible_collections.celeryops.celery.plugins.module_utils._warm_shutdown.procfs import ProcFS
from ansible_collections.celeryops.celery.tests.unit.plugins.fake_world import FAKE_WORKER, FakeWorld


@pytest.fixture
def world():
    """An empty fake process world at fake time 1000.0."""
    return FakeWorld()


@pytest.fixture
def real_workers(tmp_path):
    """start(name, task, quit_mode='cold', late=0.0) runs a FAKE_WORKER; its Popen has .go, the file that
    starts its tasks' time. Every worker and everything below it is killed afterwards."""
    started = {}

    def start(name, task, quit_mode='cold', late=0.0):
        go = str(tmp_path / ('go-' + name))
        p = subprocess.Popen([sys.executable, '-c', FAKE_WORKER, str(task), quit_mode, str(late), go],
                             stdout=subprocess.PIPE)
        assert p.stdout.readline() == b'ready\n'
        p.go = go
        started[name] = p
        return p

    yield start, started
    fs = ProcFS()
    for p in started.values():
        # Once a worker is reaped its PID may belong to another process: leave it alone.
        if p.poll() is None:
            for pid in fs.descendants([p.pid]) | set([p.pid]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        p.wait()
        p.stdout.close()
