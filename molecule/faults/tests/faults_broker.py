"""The faults scenario's one Redis broker, which its checks stop and start
(test_faults.py, test_watchdog.py)."""
import contextlib
import subprocess

from celery_checks import docker, wait

BROKER = "fl-broker"


def broker_up():
    try:
        return docker("exec", BROKER, "redis-cli", "ping", timeout=10).strip() == "PONG"
    except subprocess.SubprocessError:
        return False


def start_broker():
    docker("start", BROKER)
    wait(broker_up, 30, "the broker to answer")


@contextlib.contextmanager
def broker_restored():
    """Whatever the check does to the broker, it runs again afterwards."""
    try:
        yield
    finally:
        if not broker_up():
            start_broker()
