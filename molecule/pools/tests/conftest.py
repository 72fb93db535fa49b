"""The shared fixtures of the scenarios' checks (molecule/resources/tests)."""

from celery_fixtures import celery, pytest_collection_modifyitems, pytest_configure

__all__ = ["celery", "pytest_collection_modifyitems", "pytest_configure"]
