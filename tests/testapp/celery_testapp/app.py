import ctypes
import json
import os
import socket
import time

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import after_task_publish


def _version():
    """The release's version: a VERSION file next to this module (the release
    scenario writes one per release), else "1"."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")) as handle:
            return handle.read().strip() or "1"
    except OSError:
        return "1"


VERSION = os.environ.get("CELERY_TESTAPP_VERSION_OVERRIDE") or _version()

app = Celery("celery_testapp")
app.conf.update(
    # Broker from CELERY_BROKER_URL (the env file); results go to the same Redis.
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or os.environ.get("CELERY_BROKER_URL"),
    result_expires=3600,
    # A task that ends while the result backend is away keeps trying to store
    # its result (backoff up to 10 s) instead of ending FAILURE with a
    # ConnectionError although its work was done: what a careful app sets when
    # its backend can go away (the faults scenario's broker outage).
    result_backend_always_retry=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
# The tls scenario's checks publish the way the workers connect: with the
# broker TLS settings the collection gives the workers on their command line.
if os.environ.get("CELERY_TESTAPP_BROKER_USE_SSL"):
    app.conf.broker_use_ssl = json.loads(os.environ["CELERY_TESTAPP_BROKER_USE_SSL"])
# The pools scenario shows what a short Redis visibility_timeout does to a
# task that outlives it while its worker drains.
if os.environ.get("CELERY_TESTAPP_VISIBILITY_TIMEOUT"):
    app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["CELERY_TESTAPP_VISIBILITY_TIMEOUT"])}


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
    result.update({"slept": round(time.time() - started, 3), "started": started, "finished": time.time()})
    return result


# Time limits (pools scenario): soft_limited sleeps up to `seconds` and reports
# whether SoftTimeLimitExceeded interrupted it, and when; stubborn swallows
# that exception and sleeps on, so that only the hard limit ends it.
@app.task
def soft_limited(seconds):
    started = time.time()
    try:
        time.sleep(float(seconds))
        interrupted = False
    except SoftTimeLimitExceeded:
        interrupted = True
    result = _where()
    result.update({"soft_limit_hit": interrupted, "after": round(time.time() - started, 3)})
    return result


@app.task
def stubborn(seconds):
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            time.sleep(max(0.0, deadline - time.time()))
        except SoftTimeLimitExceeded:
            pass
    return _where()


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


# Each tick as Beat hands it to the broker, with the host of the Beat that sent
# it: the broker's side of the schedule, whichever worker runs the tick.
PUBLISHED_KEY = "celery_testapp:published"


@after_task_publish.connect
def _tick_published(sender=None, **_):
    if sender == tick.name:
        app.backend.client.rpush(PUBLISHED_KEY, json.dumps(dict(_where(), at=time.time())))


# Task streams of the release and fleet scenarios: every execution of
# record(seq) is appended to one Redis list, so that the tests count lost and
# duplicated tasks and measure the longest pause between two completions.
STREAM_KEY = "celery_testapp:stream"


@app.task
def record(seq, stream=STREAM_KEY):
    app.backend.client.rpush(stream, json.dumps(dict(_where(), seq=seq, at=time.time())))
    return seq


# Memory limits (faults scenario): leak(mb, hold) makes mb MiB resident (every
# page touched) and holds them for hold seconds. With once_key only the first
# delivery leaks, counted in Redis: a task whose pool process was killed for
# its memory is redelivered (acks_late, reject_on_worker_lost) and would be
# killed again on every delivery.
@app.task
def leak(mb, hold, once_key=None):
    attempt = app.backend.client.incr(once_key) if once_key else 1
    block = bytearray(int(mb) * 1024 * 1024 if attempt == 1 else 0)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(float(hold))
    result = _where()
    result.update({"attempt": attempt, "leaked_mb": len(block) // (1024 * 1024)})
    return result


# Tasks in flight through a fault (faults scenario): hold runs until
# release_file exists (the test creates it in the app's state dir at the
# moment it chooses, e.g. while the broker is down), at most `limit` seconds.
# It counts its deliveries, so that a task delivered again shows as attempt 2,
# and says when it ended.
@app.task(bind=True)
def hold(self, release_file, limit=600):
    attempt = app.backend.client.incr("celery_testapp:attempts:" + self.request.id)
    started = time.time()
    while not os.path.exists(release_file) and time.time() - started < float(limit):
        time.sleep(0.2)
    result = _where()
    result.update({"attempt": attempt, "released": os.path.exists(release_file),
                   "started": started, "finished": time.time()})
    return result


# Cold shutdown (release scenario): long_once runs `seconds` on its first
# delivery and returns at once when redelivered, reporting the attempt, so
# that a redelivered task shows which release completed it.
@app.task(bind=True)
def long_once(self, seconds):
    return _long_once(self, seconds)


# The same, acknowledged as it starts (pools scenario, the watchdog's busy
# workers): a short visibility_timeout on any consumer of the same Redis
# database hands out again every unacknowledged message that outlives it,
# whatever its queue, and test_pools.py runs such consumers beside them.
@app.task(bind=True, acks_late=False)
def long_acked_at_start(self, seconds):
    return _long_once(self, seconds)


# The same in a call that never yields to gevent's or eventlet's loop (the C
# library's sleep, which no monkey patch reaches): the worker's main loop
# cannot answer ping while it runs, as with a task stuck in a C extension.
@app.task(bind=True, acks_late=False)
def long_blocking_acked_at_start(self, seconds):
    return _long_once(self, seconds, sleep=_sleep_without_yielding)


def _sleep_without_yielding(seconds):
    libc = ctypes.CDLL(None)
    deadline = time.time() + float(seconds)
    # sleep() returns early when a signal arrives.
    while time.time() < deadline:
        libc.sleep(max(1, int(deadline - time.time())))


def _long_once(task, seconds, sleep=time.sleep):
    attempt = app.backend.client.incr("celery_testapp:attempts:" + task.request.id)
    started = time.time()
    if attempt == 1:
        sleep(float(seconds))
    result = _where()
    result.update({"attempt": attempt, "slept": round(time.time() - started, 3)})
    return result
