"""Flower beside Beat: it asks for credentials, lists every worker of both
hosts and the tasks they ran, counts them in its Prometheus metrics, shows
them to a browser under the reverse proxy's path, keeps its password out of
everything but its env file, and goes on through a broker outage and a
restart of the workers; the status playbook says where it runs, and a site
run leaves a hand-made unit of Flower's name on another host alone.

Runs after test_beat.py, which leaves Beat, and so Flower, on the second
host under systemd (the manager switches there check Flower under both
managers); alone (pytest -k flower), on the first, where the converge puts it."""
import json
import os
import shlex
import time

import pytest
import requests

from celery_checks import docker, run_site, wait
from flower_checks import PASSWORD, USER, Flower, assert_asks_for_credentials, assert_flower_shows_the_fleet, run_whoami
from test_beat import FIRST, SECOND, celery_host, hosts

NODES = {"default@" + FIRST, "default@" + SECOND}
CHROMIUM = "/usr/bin/chromium"


def flower_main_pid(celery):
    return int(celery.sh("systemctl show -p MainPID --value testapp-flower.service").stdout.strip())


@pytest.fixture(scope="module")
def where():
    """(the host that runs Flower, the other host): the Beat host."""
    running = [name for name, celery in hosts("systemd").items() if flower_main_pid(celery)]
    assert len(running) == 1, "Flower runs on %s, not on one host" % running
    return running[0], ({FIRST, SECOND} - set(running)).pop()


@pytest.fixture(scope="module")
def flower(where):
    return Flower(where[0])


def test_flower_runs_beside_beat_only_under_its_own_user_sandboxed(where):
    here, other = celery_host(where[0], "systemd"), celery_host(where[1], "systemd")
    assert here.beat_pids(), "Flower runs on %s, Beat does not" % where[0]
    assert not other.host.file("/etc/systemd/system/testapp-flower.service").exists
    assert not other.host.file("/etc/testapp-flower/flower.env").exists
    users = here.sh("ps -o user= -p %d" % flower_main_pid(here)).stdout.split()
    assert users == ["testapp-flower"], users
    out = here.sh("systemd-analyze security testapp-flower.service | tail -n 1").stdout
    assert float(out.split(":")[1].split()[0]) <= 2.0, out


def test_flower_asks_for_credentials_on_every_page_and_api_call(flower):
    assert_asks_for_credentials(flower)
    # Under the prefix only: the root of the port is not Flower's.
    assert requests.get(flower.root + "/api/workers", auth=(USER, PASSWORD), timeout=10).status_code == 404


def test_flower_lists_every_worker_of_the_fleet_and_the_tasks_they_ran(flower):
    ran = assert_flower_shows_the_fleet(flower, celery_host(FIRST, "systemd"), NODES, count=16)
    # The tasks went to both hosts (one queue, two hosts), so Flower listed
    # tasks of each, not of its own host alone.
    assert set(ran.values()) == {FIRST, SECOND}, "one host ran all 16 tasks: %s" % sorted(set(ran.values()))


def test_flowers_metrics_count_the_tasks_each_worker_ran(flower):
    before = flower.succeeded()
    ran = run_whoami(celery_host(FIRST, "systemd"), 10)
    grown = {}

    def counted():
        after = flower.succeeded()
        grown.update({node: after.get(node, 0) - before.get(node, 0) for node in NODES})
        return all(grown["default@" + host] >= list(ran.values()).count(host) for host in (FIRST, SECOND))
    wait(counted, 60, "flower_events_total to count the tasks: ran %s, counted %s" % (ran, grown), interval=2)


def test_the_dashboard_shows_the_fleet_in_a_browser_under_the_prefix(flower):
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
    shot = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), ".cache", "logs", "flower-dashboard.png")
    os.makedirs(os.path.dirname(shot), exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                          viewport={"width": 1280, "height": 640})
            page = context.new_page()
            responses = []
            page.on("response", lambda response: responses.append((response.url, response.status)))
            page.goto(flower.base + "/", wait_until="load")
            for node in sorted(NODES):
                page.wait_for_selector("text=%s" % node, timeout=60000)
            text = page.inner_text("body")
            page.screenshot(path=shot)
        finally:
            browser.close()
    # The table breaks long names over lines: compare without the white space.
    flat = "".join(text.split())
    for node in NODES:
        assert node in flat, text[:3000]
    assert flat.count("Online") >= len(NODES), text[:3000]
    own = [(url, status) for url, status in responses if url.startswith(flower.root)]
    assert own and all(url.startswith(flower.base + "/") for url, _status in own), \
        "the page asked for something outside %s: %s" % (flower.base, own)
    assert all(status < 400 for _url, status in own), own
    assets = [url for url, _status in own if "/static/" in url]
    assert any(url.split("?")[0].endswith(".js") for url in assets) and \
        any(url.split("?")[0].endswith(".css") for url in assets), assets


def test_flowers_password_stays_in_its_env_file_alone(where):
    second = celery_host(where[0], "systemd")
    env = second.host.file("/etc/testapp-flower/flower.env")
    assert (env.mode, env.user, env.group) == (0o640, "root", "testapp-flower")
    # Where the password is, so that the checks below could find it.
    assert PASSWORD in env.content_string
    for place, command in {"the unit": "cat /etc/systemd/system/testapp-flower.service",
                           "systemd's view of the unit": "systemctl show testapp-flower.service",
                           "the process list": "ps -eo user,args",
                           "the journal": "journalctl -q --no-pager -u testapp-flower.service"}.items():
        assert PASSWORD not in second.sh(command).stdout, "the password is in %s" % place
    files = second.sh("grep -rlF --no-messages -e %s /etc /opt /srv /var/log /run /tmp || true" % shlex.quote(PASSWORD)).stdout.split()
    assert files == ["/etc/testapp-flower/flower.env"], files


def test_flower_goes_on_through_a_broker_outage_and_a_restart_of_the_workers(flower, where):
    second = celery_host(where[0], "systemd")
    pid = flower_main_pid(second)
    flower.wait_online(NODES)
    docker("stop", "bt-broker")
    try:
        time.sleep(20)
        # Its pages answer while the broker is away.
        assert flower.get("/workers").status_code == 200
    finally:
        docker("start", "bt-broker")
    for celery in hosts("systemd").values():
        celery.sh("systemctl restart testapp.target")
    for celery in hosts("systemd").values():
        celery.wait_for(lambda c=celery: c.ping(c.node("default")), 120, "ping after the outage")
    # The same process, never restarted, sees the workers back and the tasks
    # they run now.
    assert flower_main_pid(second) == pid
    assert "NRestarts=0" in second.sh("systemctl show -p NRestarts testapp-flower.service").stdout
    # The restarted workers send their task events themselves (--task-events,
    # on where Flower runs): when they relied on Flower's enable_events
    # broadcast, one worker's tasks were sometimes never listed after this.
    for celery in hosts("systemd").values():
        assert "--task-events" in celery.sh("ps -o args= -u testapp").stdout, celery
    assert_flower_shows_the_fleet(flower, celery_host(FIRST, "systemd"), NODES, timeout=120)


def test_the_status_shows_where_flower_runs(tmp_path, where):
    here, other = where
    path = tmp_path / "fleet.json"
    result = run_site({"celery_status_json": str(path)}, playbook="celeryops.celery.status", check=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    fleet = json.loads(path.read_text())
    assert fleet[here]["flower"] == {"service": "testapp-flower.service", "state": "running",
                                     "pid": flower_main_pid(celery_host(here, "systemd"))}, fleet[here]
    assert fleet[other]["flower"]["state"] != "running", fleet[other]
    lines = [line.strip(' "') for line in result.stdout.splitlines()]
    assert any(line.startswith(here + "  ") and "Flower runs here" in line for line in lines), result.stdout[-3000:]
    assert any(line.startswith(other + "  ") and "Flower not here" in line for line in lines), result.stdout[-3000:]


HAND_MADE = "[Unit]\nDescription=A Flower set up by hand\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"


def test_a_hand_made_unit_of_the_same_name_elsewhere_is_left_alone(where):
    # A host that must not run Flower, with a unit of Flower's name that this
    # collection did not write (a Flower set up before): a site run leaves it.
    here, other = where
    celery = celery_host(other, "systemd")
    unit = "/etc/systemd/system/testapp-flower.service"
    celery.sh("printf %%s %s > %s && systemctl daemon-reload && systemctl enable --now testapp-flower.service"
              % (shlex.quote(HAND_MADE), unit))
    try:
        result = run_site({"celery_beat_host": here})
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
        assert celery.host.file(unit).content_string == HAND_MADE
        assert celery.host.service("testapp-flower.service").is_running
        # Flower itself still runs where it belongs.
        assert flower_main_pid(celery_host(here, "systemd"))
    finally:
        celery.sh("systemctl disable --now testapp-flower.service; rm -f %s; systemctl daemon-reload" % unit)
