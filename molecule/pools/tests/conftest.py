"""The shared fixtures of the scenarios' checks (molecule/resources/tests)."""

from celery_fixtures import celery, hosts, pytest_collection_modifyitems, pytest_configure

__all__ = ["celery", "hosts", "pytest_collection_modifyitems", "pytest_configure"]
