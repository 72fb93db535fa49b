"""The faults checks' hosts (test_faults.py, test_watchdog.py): each host of
the group celery_workers by its inventory name, seen through its manager."""
import os

import pytest
import testinfra

from celery_checks import CeleryHost


@pytest.fixture(scope="session")
def hosts():
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    found = testinfra.get_hosts(["ansible://celery_workers"], ansible_inventory=inventory)
    return {host.backend.get_hostname(): CeleryHost(host) for host in sorted(found, key=lambda h: h.backend.get_hostname())}
