# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The watchdog's probe (celery_watchdog.py starts it): runs as the app's
user with the app's Python, environment and directory, imports the app once,
then answers each request line {"nodes": [...], "timeout": s} with one line
{"reachable": bool, "ping": [the nodes that answered], "error": str}.

Usage: python celery_watchdog_probe.py '{"app": ..., "broker_use_ssl": ...}'
"""
import json
import os
import sys


def main():
    # The answers go to a copy of stdout; whatever the app prints goes to
    # stderr, the watchdog's log.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # The app's directory first on the path, as for `celery --app`; not
    # this file's.
    sys.path[0] = os.getcwd()
    from celery.app.utils import find_app
    args = json.loads(sys.argv[1])
    app = find_app(args["app"])
    if args.get("broker_use_ssl"):
        app.conf.broker_use_ssl = args["broker_use_ssl"]
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        answer = {"reachable": False, "ping": [], "error": None}
        conn = app.connection_for_write(connect_timeout=request["timeout"])
        try:
            conn.ensure_connection(max_retries=1, interval_start=1, interval_max=1, timeout=request["timeout"])
            answer["reachable"] = True
            replies = app.control.ping(destination=request["nodes"], timeout=request["timeout"], connection=conn,
                                       limit=len(request["nodes"]))
            answer["ping"] = sorted({node for reply in replies or [] for node in reply})
        except Exception as exc:
            answer["error"] = "%s: %s" % (type(exc).__name__, exc)
        finally:
            conn.release()
        print(json.dumps(answer), file=answers, flush=True)


main()
