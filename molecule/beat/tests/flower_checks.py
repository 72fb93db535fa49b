"""Flower as its users reach it: over HTTP from outside the host, under the
URL prefix of the scenario, with and without the credentials of basic
authentication; and its Prometheus metrics as a scraper reads them."""
import re

import requests

from celery_checks import docker, wait

# What the scenario's molecule.yml sets.
PREFIX = "ops/flower"
PORT = 5555
USER = "ops"
PASSWORD = "fl0wer-pass-must-not-leak"
METRIC = re.compile(r'^flower_events_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$', re.M)


class Flower:
    """The Flower of one host of the scenario, by its container's address."""

    def __init__(self, container):
        self.container = container
        address = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container).split()
        assert address, "no address for %s" % container
        self.root = "http://%s:%d" % (address[0], PORT)
        self.base = "%s/%s" % (self.root, PREFIX)

    def get(self, path, auth=(USER, PASSWORD), timeout=10):
        return requests.get(self.base + path, auth=auth, timeout=timeout)

    def answers(self):
        try:
            return self.get("/healthcheck", auth=None, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def workers_online(self):
        """Node name -> alive, as Flower's events tell it."""
        response = self.get("/api/workers?status=1")
        response.raise_for_status()
        return response.json()

    def tasks(self):
        response = self.get("/api/tasks")
        response.raise_for_status()
        return response.json()

    def succeeded(self):
        """flower_events_total of type task-succeeded, summed by worker, from /metrics."""
        response = self.get("/metrics", auth=None)
        response.raise_for_status()
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers
        counts = {}
        for match in METRIC.finditer(response.text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
            if labels.get("type") == "task-succeeded":
                counts[labels["worker"]] = counts.get(labels["worker"], 0) + float(match.group("value"))
        return counts

    def wait_online(self, nodes, timeout=120):
        """Until Flower sees every one of nodes alive; returns what it saw."""
        seen = {}

        def all_alive():
            seen.update(self.workers_online())
            return all(seen.get(node) for node in nodes)
        try:
            wait(all_alive, timeout, "Flower to see %s online" % ", ".join(sorted(nodes)), interval=2)
        except AssertionError as error:
            raise AssertionError("%s; Flower saw %s" % (error, seen)) from error
        return seen


def run_whoami(celery, count):
    """Runs count whoami tasks across the fleet; {task id: host name that ran it}."""
    out = celery.probe("batch", "whoami", "--count", count, "--timeout", "120")
    ran = {r["id"]: r["result"]["hostname"] for r in out["results"] if r["state"] == "SUCCESS"}
    assert len(ran) == count, "not every task ran: %s" % out["results"]
    return ran


def assert_flower_shows_the_fleet(flower, celery, nodes, count=12, timeout=60):
    """Flower names every node of nodes alive, and lists the tasks a batch just
    ran with the worker that ran each, within timeout seconds."""
    flower.wait_online(nodes)
    ran = run_whoami(celery, count)
    expected = {task_id: "default@%s" % host for task_id, host in ran.items()}
    listed = {}

    def all_listed():
        tasks = flower.tasks()
        listed.update({task_id: (tasks[task_id].get("state"), tasks[task_id].get("worker"))
                       for task_id in expected if task_id in tasks})
        return all(listed.get(task_id) == ("SUCCESS", node) for task_id, node in expected.items())
    try:
        wait(all_listed, timeout, "Flower to list the %d tasks with their workers" % count, interval=2)
    except AssertionError as error:
        raise AssertionError("%s; expected %s, listed %s" % (error, expected, listed)) from error
    return ran


def assert_asks_for_credentials(flower):
    """Every page and API call without the right credentials gets 401."""
    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
        for auth in (None, (USER, "wrong-" + PASSWORD), ("nobody", PASSWORD)):
            status = flower.get(path, auth=auth).status_code
            assert status == 401, "%s with %s answered %d, not 401" % (path, auth and auth[0], status)
        assert flower.get(path).status_code == 200, path
