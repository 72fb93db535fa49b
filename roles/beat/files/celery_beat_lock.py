"""Runs `celery beat` with RedBeat's scheduler and lock, so that of the Beats
of one app (celery_beat_hosts) exactly one ticks and the others wait.

Run with the app's own Python, in the app's directory, with the app's
environment (the env file) set:

    celery_beat_lock --lock-timeout SECONDS --key-prefix PREFIX -- --app=APP beat \\
        --scheduler=redbeat.RedBeatScheduler --max-interval=SECONDS ...

RedBeat reads its settings from the app's configuration only. This sets them
there when Beat's loader imports the app's modules (Celery's import_modules
signal, sent before the scheduler is made), then runs Celery's own command
line with the arguments after `--`:
  redbeat_redis_url     CELERYOPS_BEAT_LOCK_URL from the environment (it may
                        hold a password, so it is never an argument), else the
                        app's broker_url, which must then be a Redis
  redbeat_lock_timeout  --lock-timeout: how long a Beat that stopped ticking
                        keeps the lock
  redbeat_key_prefix    --key-prefix: the app's keys (schedule and lock), the
                        same on every host of the app
With --holder-file PATH, the Beat that took the lock writes {"pid": ..., "since":
...} there once it holds it (a Beat that waits writes nothing): RedBeat's lock
holds a random token, so this is how the status playbook tells the ticking
Beat from the ones that stand by.
"""
import argparse
import json
import os
import sys
import time

LOCK_URL_VARIABLE = "CELERYOPS_BEAT_LOCK_URL"
# The URL schemes RedBeat connects to (redis-py's, and RedBeat's sentinel and
# cluster forms).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis-sentinel", "rediss-sentinel", "redis-cluster", "rediss-cluster")


class LockSettingsError(Exception):
    """The lock's Redis cannot be told from the environment and the app."""


def parse(argv):
    parser = argparse.ArgumentParser(prog="celery_beat_lock", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--lock-timeout", type=int, required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--holder-file", default="")
    parser.add_argument("celery_args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    args = opts.celery_args[1:] if opts.celery_args[:1] == ["--"] else opts.celery_args
    if not args:
        parser.error("no arguments for celery after --")
    if opts.lock_timeout < 1:
        parser.error("--lock-timeout must be 1 or more, got %d" % opts.lock_timeout)
    if not opts.key_prefix:
        parser.error("--key-prefix must not be empty")
    return opts, args


def scheme(url):
    return url.split("://", 1)[0].lower() if "://" in url else ""


def settings(opts, broker_url, environ):
    """RedBeat's settings for the app, from the options, the environment and
    the app's broker_url (a string, a list of them, or None)."""
    url = environ.get(LOCK_URL_VARIABLE, "")
    if not url:
        first = broker_url[0] if isinstance(broker_url, (list, tuple)) and broker_url else broker_url
        url = (first or "").split(";")[0].strip()
        if scheme(url) not in REDIS_SCHEMES:
            # Only the scheme: the URL may hold a password.
            raise LockSettingsError(
                "Beat's lock needs a Redis: %s is not set and the app's broker_url is %s, not a Redis; set "
                "celery_beat_lock_url" % (LOCK_URL_VARIABLE, (scheme(url) + "://...") if scheme(url) else "not set"))
    elif scheme(url) not in REDIS_SCHEMES:
        raise LockSettingsError("%s must be a Redis URL (%s), got a %s:// URL" % (
            LOCK_URL_VARIABLE, ", ".join(s + "://" for s in REDIS_SCHEMES[:2]), scheme(url) or "scheme-less"))
    return {"redbeat_redis_url": url, "redbeat_lock_timeout": opts.lock_timeout, "redbeat_key_prefix": opts.key_prefix}


def forget_holder(path):
    """A holder file left by an earlier Beat of this host is not true of this
    one (and its pid may be this one's after a reboot)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def note_holder(path):
    """Writes the holder file (this process), whole or not at all."""
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump({"pid": os.getpid(), "since": time.time()}, handle)
    os.replace(partial, path)


def main(argv=None):
    opts, celery_args = parse(sys.argv[1:] if argv is None else argv)
    # Celery from the app's virtualenv, imported only once the arguments hold.
    from celery import signals
    from celery.bin.celery import main as celery_main

    failure = []

    def configure(sender=None, **_):
        try:
            sender.conf.update(settings(opts, sender.conf.broker_url, os.environ))
        except LockSettingsError as exc:
            failure.append(str(exc))
            raise
        if opts.holder_file:
            # RedBeat takes the lock in its own beat_init receiver, connected
            # when its module is imported: imported now, it runs before this
            # one, which then finds the lock taken (or None, when taking it failed).
            import redbeat.schedulers  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
            signals.beat_init.connect(held, weak=False)

    def held(sender=None, **_):
        if getattr(sender.scheduler, "lock", None) is not None:
            note_holder(opts.holder_file)

    if opts.holder_file:
        forget_holder(opts.holder_file)
    signals.import_modules.connect(configure, weak=False)
    sys.argv = ["celery"] + celery_args
    try:
        return celery_main()
    finally:
        if failure:
            sys.stderr.write("celery_beat_lock: %s\n" % failure[0])


if __name__ == "__main__":
    sys.exit(main())
