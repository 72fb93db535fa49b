"""roles/beat/files/celery_beat_lock.py: RedBeat's settings reach the app's
configuration before Beat makes its scheduler; the lock's Redis comes from the
environment (never an argument) or the app's broker, and anything that is not
a Redis is refused with the variable to set, without the URL's password."""
import importlib.util
import pathlib
import sys
import types

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "roles" / "beat" / "files" / "celery_beat_lock.py"
SPEC = importlib.util.spec_from_file_location("celery_beat_lock", SCRIPT)
celery_beat_lock = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(celery_beat_lock)

ARGS = ["--lock-timeout=30", "--key-prefix=redbeat:proj", "--", "--app=proj", "beat", "--scheduler=redbeat.RedBeatScheduler"]


def settings(broker_url, environ):
    opts, _args = celery_beat_lock.parse(ARGS)
    return celery_beat_lock.settings(opts, broker_url, environ)


def test_the_arguments_after_the_separator_go_to_celery():
    opts, args = celery_beat_lock.parse(ARGS)
    assert (opts.lock_timeout, opts.key_prefix) == (30, "redbeat:proj")
    assert args == ["--app=proj", "beat", "--scheduler=redbeat.RedBeatScheduler"]


@pytest.mark.parametrize("argv", [ARGS[:3], ["--lock-timeout=0"] + ARGS[1:], ["--key-prefix=x"] + ARGS[2:],
                                  ["--lock-timeout=30", "--key-prefix="] + ARGS[2:]])
def test_incomplete_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        celery_beat_lock.parse(argv)


def test_the_lock_url_from_the_environment_wins_over_the_broker():
    result = settings("amqp://app:pw@rabbit//", {"CELERYOPS_BEAT_LOCK_URL": "rediss://:pw@lock:6380/2"})
    assert result == {"redbeat_redis_url": "rediss://:pw@lock:6380/2", "redbeat_lock_timeout": 30,
                      "redbeat_key_prefix": "redbeat:proj"}


@pytest.mark.parametrize("broker_url, expected", [
    ("redis://broker:6379/0", "redis://broker:6379/0"),
    (["redis://one:6379/0", "redis://two:6379/0"], "redis://one:6379/0"),
    ("redis://one:6379/0;redis://two:6379/0", "redis://one:6379/0"),
])
def test_without_a_lock_url_the_redis_broker_holds_the_lock(broker_url, expected):
    assert settings(broker_url, {})["redbeat_redis_url"] == expected


@pytest.mark.parametrize("broker_url, environ, words", [
    ("amqp://app:secret@rabbit//", {}, ["CELERYOPS_BEAT_LOCK_URL is not set", "amqp://...", "celery_beat_lock_url"]),
    (None, {}, ["CELERYOPS_BEAT_LOCK_URL is not set", "broker_url is not set"]),
    ("redis://broker:6379/0", {"CELERYOPS_BEAT_LOCK_URL": "amqp://app:secret@rabbit//"},
     ["CELERYOPS_BEAT_LOCK_URL must be a Redis URL", "amqp://"]),
])
def test_no_redis_for_the_lock_is_refused_without_the_password(broker_url, environ, words):
    with pytest.raises(celery_beat_lock.LockSettingsError) as error:
        settings(broker_url, environ)
    message = str(error.value)
    assert all(w in message for w in words), message
    assert "secret" not in message


def fake_celery(monkeypatch, seen):
    """A stand-in for Celery: its command line sends import_modules for an app,
    then makes the scheduler, which records the app's settings at that moment."""
    receivers, beat_init = [], []
    signals = types.SimpleNamespace(
        import_modules=types.SimpleNamespace(connect=lambda receiver, weak=True: receivers.append(receiver)),
        beat_init=types.SimpleNamespace(connect=lambda receiver, weak=True: beat_init.append(receiver)))

    class Conf(dict):
        broker_url = "redis://broker:6379/0"

    def main():
        seen["argv"] = list(sys.argv)
        app = types.SimpleNamespace(conf=Conf())
        for receiver in receivers:
            receiver(sender=app)
        seen["conf_at_scheduler"] = dict(app.conf)
        # Beat's service, then beat_init to each receiver in the order connected.
        service = types.SimpleNamespace(scheduler=types.SimpleNamespace(lock=None, lock_to_take=seen.get("lock")))
        for receiver in beat_init:
            receiver(sender=service)
        return 0

    modules = {"celery": types.ModuleType("celery"), "celery.bin": types.ModuleType("celery.bin"),
               "celery.bin.celery": types.ModuleType("celery.bin.celery")}
    modules["celery"].signals = signals
    modules["celery.bin.celery"].main = main
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "celery.signals", signals)
    monkeypatch.setattr(sys, "argv", ["celery_beat_lock"])


def test_the_settings_are_in_the_app_before_the_scheduler_is_made(monkeypatch):
    seen = {}
    fake_celery(monkeypatch, seen)
    monkeypatch.setenv("CELERYOPS_BEAT_LOCK_URL", "redis://lock:6379/3")
    assert celery_beat_lock.main(ARGS) == 0
    assert seen["argv"] == ["celery", "--app=proj", "beat", "--scheduler=redbeat.RedBeatScheduler"]
    assert seen["conf_at_scheduler"] == {"redbeat_redis_url": "redis://lock:6379/3", "redbeat_lock_timeout": 30,
                                         "redbeat_key_prefix": "redbeat:proj"}


# RedBeat's module as it is: importing it connects its beat_init receiver,
# which takes the lock (here: sets the one the test hands it).
FAKE_REDBEAT = """
from celery import signals


def acquire_distributed_beat_lock(sender=None, **kwargs):
    sender.scheduler.lock = sender.scheduler.lock_to_take


signals.beat_init.connect(acquire_distributed_beat_lock)
"""


@pytest.fixture
def redbeat(tmp_path, monkeypatch):
    package = tmp_path / "lib" / "redbeat"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "schedulers.py").write_text(FAKE_REDBEAT)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield
    for name in ("redbeat.schedulers", "redbeat"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("lock, holds", [(object(), True), (None, False)])
def test_the_beat_that_took_the_lock_writes_the_holder_file_and_no_other(tmp_path, monkeypatch, redbeat, lock, holds):
    seen = {"lock": lock}
    fake_celery(monkeypatch, seen)
    holder = tmp_path / "beat-lock-holder"
    # An earlier Beat's file (a pid that may be this one's after a reboot).
    holder.write_text('{"pid": %d, "since": 0}' % celery_beat_lock.os.getpid())
    assert celery_beat_lock.main(ARGS[:1] + ["--holder-file", str(holder)] + ARGS[1:]) == 0
    if holds:
        written = celery_beat_lock.json.loads(holder.read_text())
        assert written["pid"] == celery_beat_lock.os.getpid() and written["since"] > 0, written
    else:
        assert not holder.exists(), "a Beat without the lock left a holder file: %s" % holder.read_text()
