"""Fixtures of the scenarios' checks (celery_fixtures.py); the helpers live in celery_checks.py."""

from celery_fixtures import celery, pytest_collection_modifyitems, pytest_configure

__all__ = ["celery", "pytest_collection_modifyitems", "pytest_configure"]
