"""Asks the broker whether Celery workers are ready, as a user of the app would.

Run with the release's own Python, in the release's directory, with the app's
environment (broker URL) set:

    celery_ready.py --app APP --node NAME@HOST [--node ...] [--queue NAME@HOST=q1,q2]
                    [--broker-use-ssl JSON] [--timeout 60] [--task NAME --task-args JSON --task-kwargs JSON
                     --task-queue Q --task-timeout 60]

Imports the app, waits until every node answers ping through the broker and
consumes its queues, then optionally runs one real task and waits for its
result. Prints one JSON object and exits 0 when ready, 1 otherwise, with an
`error` that says what was not ready.
"""
import argparse
import json
import sys
import time


def _fail(report, message):
    report.update(ok=False, error=message)
    print(json.dumps(report))
    return 1


def _queues(values):
    expected = {}
    for value in values:
        node, names = value.split("=", 1) if "=" in value else (value, "")
        expected[node] = [q for q in names.split(",") if q]
    return expected


def main(argv=None):
    parser = argparse.ArgumentParser(prog="celery_ready")
    parser.add_argument("--app", required=True)
    parser.add_argument("--node", action="append", default=[])
    parser.add_argument("--queue", action="append", default=[], help="NODE=q1,q2: queues NODE must consume")
    parser.add_argument("--timeout", type=float, default=60.0)
    # The broker TLS settings the workers get on their command line.
    parser.add_argument("--broker-use-ssl", type=json.loads, default=None)
    parser.add_argument("--task")
    parser.add_argument("--task-args", default="[]")
    parser.add_argument("--task-kwargs", default="{}")
    parser.add_argument("--task-queue")
    parser.add_argument("--task-timeout", type=float, default=60.0)
    opts = parser.parse_args(argv)
    report = {"app": opts.app, "nodes": opts.node}
    start = time.monotonic()

    try:
        from celery.app.utils import find_app
        app = find_app(opts.app)
    except Exception as exc:  # any import error of the user's app
        return _fail(report, "the app %r failed to import: %s: %s" % (opts.app, type(exc).__name__, exc))
    if opts.broker_use_ssl:
        app.conf.broker_use_ssl = opts.broker_use_ssl

    deadline = start + opts.timeout
    waiting = set(opts.node)
    while waiting and time.monotonic() < deadline:
        for reply in app.control.ping(destination=sorted(waiting), timeout=1.0) or []:
            waiting.difference_update(reply)
    if waiting:
        return _fail(report, "no answer to ping within %ds from %s" % (opts.timeout, ", ".join(sorted(waiting))))
    report["ping_seconds"] = round(time.monotonic() - start, 3)

    expected = _queues(opts.queue)
    missing = dict(expected)
    while missing and time.monotonic() < deadline:
        replies = app.control.inspect(destination=sorted(missing), timeout=2.0).active_queues() or {}
        for node, queues in replies.items():
            names = {q.get("name") for q in queues or []}
            if node in missing and set(missing[node]) <= names:
                del missing[node]
    if missing:
        return _fail(report, "not consuming their queues within %ds: %s" % (
            opts.timeout, "; ".join("%s (%s)" % (n, ",".join(q)) for n, q in sorted(missing.items()))))
    report["consuming_seconds"] = round(time.monotonic() - start, 3)

    if opts.task:
        if type(app.backend).__name__ == "DisabledBackend":
            return _fail(report, "the verification task %s needs a result backend, and the app has none "
                                 "(set result_backend in the app)" % opts.task)
        options = {"queue": opts.task_queue} if opts.task_queue else {}
        result = app.send_task(opts.task, args=json.loads(opts.task_args), kwargs=json.loads(opts.task_kwargs), **options)
        try:
            value = result.get(timeout=opts.task_timeout, propagate=True)
        except Exception as exc:  # the task failed or timed out
            return _fail(report, "the verification task %s (id %s) did not succeed within %ds: %s: %s" % (
                opts.task, result.id, opts.task_timeout, type(exc).__name__, exc))
        report["task"] = {"name": opts.task, "id": result.id, "result": repr(value)[:200]}
    report.update(ok=True, seconds=round(time.monotonic() - start, 3))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
