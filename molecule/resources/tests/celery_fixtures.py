"""Fixtures and hooks the scenarios' checks share. A scenario with checks of
its own imports them into its conftest.py (see molecule/pools/tests)."""

import pytest

from celery_checks import CeleryHost


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Keep each host's checks in one xdist worker, in file order: they stop,
    restart and kill that host's workers and must not overlap. Hosts still run
    in parallel."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("_testinfra_host") if callspec else None
        if host is not None:
            item.add_marker(pytest.mark.xdist_group(host.backend.get_pytest_id()))


@pytest.fixture
def celery(host):
    return CeleryHost(host)
