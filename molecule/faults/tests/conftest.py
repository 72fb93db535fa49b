"""The shared fixtures the faults checks use (test_faults.py, test_watchdog.py):
each host of the group celery_workers by its inventory name, seen through its
manager (molecule/resources/tests/celery_fixtures.py)."""

from celery_fixtures import hosts

__all__ = ["hosts"]
