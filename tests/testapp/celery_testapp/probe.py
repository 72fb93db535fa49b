"""Command-line client used by the tests: publishes tasks and waits for them.

    python -m celery_testapp.probe call whoami
    python -m celery_testapp.probe call sleep 8 --timeout 60
    python -m celery_testapp.probe send sleep 8          # prints the task id only
    python -m celery_testapp.probe wait <task id> --timeout 60
    python -m celery_testapp.probe ticks                 # Beat ticks executed so far
    python -m celery_testapp.probe published             # Beat ticks sent so far, with the sending host
    python -m celery_testapp.probe stream --queue q1 --queue q2 --interval 0.05 --stop-file /tmp/stop [--first-seq N]
                                                         # record(seq) tasks until the file exists
    python -m celery_testapp.probe records               # executions of record() so far
    python -m celery_testapp.probe batch sleep 3 --count 50 --queue gevent --timeout 60
                                                         # publish count tasks at once, wait for all
"""
import argparse
import json
import os
import sys
import time

from .app import app


def _args(values):
    out = []
    for value in values:
        try:
            out.append(json.loads(value))
        except ValueError:
            out.append(value)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="probe")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("call", "send"):
        cmd = sub.add_parser(name)
        cmd.add_argument("task")
        cmd.add_argument("args", nargs="*")
        cmd.add_argument("--timeout", type=float, default=60)
        cmd.add_argument("--queue", default=None)
        cmd.add_argument("--time-limit", type=float, default=None,
                         help="the task's own hard time limit, over the worker's")
    batch = sub.add_parser("batch", help="publish --count tasks at once; print when, and each one's state and value")
    batch.add_argument("task")
    batch.add_argument("args", nargs="*")
    batch.add_argument("--count", type=int, default=1)
    batch.add_argument("--timeout", type=float, default=60)
    batch.add_argument("--queue", default=None)
    stream = sub.add_parser("stream", help="publish record(seq) every --interval seconds until --stop-file exists")
    stream.add_argument("--queue", action="append", required=True, help="queues, used in turn")
    stream.add_argument("--interval", type=float, default=0.05)
    stream.add_argument("--stop-file", required=True)
    stream.add_argument("--first-seq", type=int, default=0,
                        help="the first sequence number: streams of several producers count in ranges of their own")
    for name, text in (("records", "print the executions of record() as JSON"),
                       ("clear-records", "forget the executions of record()")):
        sub.add_parser(name, help=text).add_argument("--key", default=None, help="the list record() wrote to")
    sub.add_parser("ticks", help="print the recorded Beat ticks as JSON")
    sub.add_parser("clear-ticks", help="forget the recorded Beat ticks")
    sub.add_parser("published", help="print the Beat ticks sent to the broker as JSON")
    sub.add_parser("clear-published", help="forget the Beat ticks sent")
    wait = sub.add_parser("wait")
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float, default=60)
    opts = parser.parse_args(argv)

    if opts.command == "stream":
        return _stream(opts)
    if opts.command == "batch":
        return _batch(opts)
    if opts.command in ("records", "clear-records", "ticks", "clear-ticks", "published", "clear-published"):
        from .app import PUBLISHED_KEY, STREAM_KEY, TICKS_KEY
        if opts.command.endswith("ticks"):
            key = TICKS_KEY
        elif opts.command.endswith("published"):
            key = PUBLISHED_KEY
        else:
            key = opts.key or STREAM_KEY
        client = app.backend.client
        if opts.command.startswith("clear-"):
            client.delete(key)
            print("[]")
        else:
            print(json.dumps([json.loads(item) for item in client.lrange(key, 0, -1)]))
        return 0
    if opts.command in ("call", "send"):
        options = {"queue": opts.queue} if opts.queue else {}
        if opts.time_limit:
            options["time_limit"] = opts.time_limit
        result = app.send_task("celery_testapp.app." + opts.task, args=_args(opts.args), **options)
        if opts.command == "send":
            print(result.id)
            return 0
    else:
        result = app.AsyncResult(opts.task_id)
    value = result.get(timeout=opts.timeout)
    print(json.dumps({"id": result.id, "state": result.state, "result": value}))
    return 0


def _batch(opts):
    """Publishes --count tasks at once and waits for every one (failures are
    results too: their state and the exception's repr)."""
    options = {"queue": opts.queue} if opts.queue else {}
    published = time.time()
    sent = [app.send_task("celery_testapp.app." + opts.task, args=_args(opts.args), **options) for _number in range(opts.count)]
    deadline = time.monotonic() + opts.timeout
    results = []
    for result in sent:
        value = result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
        results.append({"id": result.id, "state": result.state,
                        "result": value if result.state == "SUCCESS" else repr(value)})
    print(json.dumps({"published": published, "results": results}))
    return 0


def _stream(opts):
    """Publishes at a steady rate, each task to the next queue in turn; prints
    what it published (sequence numbers first_seq..first_seq+published-1,
    task n to queue n % len(queues))."""
    count = 0
    started = time.time()
    next_at = time.monotonic()
    while not os.path.exists(opts.stop_file):
        queue = opts.queue[count % len(opts.queue)]
        app.send_task("celery_testapp.app.record", args=[opts.first_seq + count], queue=queue)
        count += 1
        next_at += opts.interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps({"published": count, "first_seq": opts.first_seq, "queues": opts.queue, "started": started,
                      "stopped": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
