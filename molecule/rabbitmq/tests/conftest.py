"""The shared `celery` fixture for the checks of this scenario's own (the
shared hooks already come with molecule/resources/tests/conftest.py), and the
outage check moved after every other check: it stops the host's broker."""
import pytest

from celery_fixtures import celery

__all__ = ["celery"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    # A stable sort: every other check keeps its place.
    items.sort(key=lambda item: item.module.__name__ == "test_broker_outage")
