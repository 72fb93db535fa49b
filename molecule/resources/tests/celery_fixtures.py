"""Fixtures and hooks the scenarios' checks share. A scenario with checks of
its own imports them into its conftest.py (see molecule/pools/tests)."""

import os

import pytest
import testinfra

from celery_checks import CeleryHost


ONE_HOST_PER_MANAGER = "one_host_per_manager"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", ONE_HOST_PER_MANAGER + ": the check runs on the first host of each process manager in the scenario "
        "only: what it proves is the manager's, the same on every distribution")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep each host's checks in one xdist worker, in file order: they stop,
    restart and kill that host's workers and must not overlap. Hosts still run
    in parallel, and so does a check that names an xdist group of its own.
    A check marked one_host_per_manager is deselected (reported as such,
    never counted as passed) on all but the first host of each process
    manager."""
    kept, deselected, seen = [], [], set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("_testinfra_host") if callspec else None
        if host is not None:
            # A check in a group of its own (its module's xdist_group) keeps it.
            if item.get_closest_marker("xdist_group") is None:
                item.add_marker(pytest.mark.xdist_group(host.backend.get_pytest_id()))
            if item.get_closest_marker(ONE_HOST_PER_MANAGER):
                key = (item.originalname, host.ansible.get_variables().get("celery_process_manager", "systemd"))
                if key in seen:
                    deselected.append(item)
                    continue
                seen.add(key)
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def celery(host):
    return CeleryHost(host)


@pytest.fixture(scope="session")
def hosts():
    """Every host of the group celery_workers by its inventory name, for the
    checks that act on all hosts at once (in_parallel) rather than on one."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    found = testinfra.get_hosts(["ansible://celery_workers"], ansible_inventory=inventory)
    return {host.backend.get_hostname(): CeleryHost(host) for host in sorted(found, key=lambda h: h.backend.get_hostname())}
