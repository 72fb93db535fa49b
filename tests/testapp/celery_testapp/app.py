import json
import os
import socket
import time

from celery import Celery

# Bumped by the release scenario to tell two releases apart.
VERSION = os.environ.get("CELERY_TESTAPP_VERSION_OVERRIDE") or "1"

app = Celery("celery_testapp")
app.conf.update(
    # Broker from CELERY_BROKER_URL (the env file); results go to the same Redis.
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or os.environ.get("CELERY_BROKER_URL"),
    result_expires=3600,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


def _where():
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "version": VERSION,
        "cwd": os.getcwd(),
    }


@app.task
def add(x, y):
    return x + y


@app.task
def whoami():
    return _where()


@app.task
def sleep(seconds):
    started = time.time()
    time.sleep(float(seconds))
    result = _where()
    result.update({"slept": round(time.time() - started, 3)})
    return result


@app.task
def secret_env(name):
    """Whether a variable from the env file reached the task (not its value)."""
    return bool(os.environ.get(name))


# Beat's schedule in the scenarios: one tick every CELERY_TESTAPP_BEAT_INTERVAL
# seconds, each recorded in Redis so that the tests count executions.
TICKS_KEY = "celery_testapp:ticks"
if os.environ.get("CELERY_TESTAPP_BEAT_INTERVAL"):
    app.conf.beat_schedule = {
        "tick": {"task": "celery_testapp.app.tick", "schedule": float(os.environ["CELERY_TESTAPP_BEAT_INTERVAL"])},
    }


@app.task
def tick():
    app.backend.client.rpush(TICKS_KEY, json.dumps(dict(_where(), at=time.time())))
    return True
