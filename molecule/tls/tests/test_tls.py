"""Brokers that speak TLS only and require a client certificate: amqps:// to
RabbitMQ (Debian 13, systemd) and rediss:// to Redis (Ubuntu 22.04,
supervisor). The collection installs the CA, the client certificate and its
key from the controller and gives every worker the broker's TLS settings on
its command line, with no change to the app.

- Tasks published to each queue are executed, over TLS: the brokers accept
  nothing else. Beat's ticks go through the TLS broker too.
- The files are 0640 root:<app group>; the key and the passwords show in no
  process listing, unit or program file, log, or play output.
- A wrong CA, or a client certificate the broker's CA did not sign, fails the
  play before any change, with a message that names the variable and the
  certificate problem.
- A new client key in check mode with --diff is reported as a change, never
  shown."""
import concurrent.futures
import json
import os
import shlex

import pytest

from celery_checks import CeleryHost, json_report, run_site, wait

testinfra_hosts = ["ansible://celery_workers"]

TLS_DIR = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "tls")
INSTALLED = "/etc/testapp/tls"
SECRET = "s3cr3t-value-must-not-leak"
SETTING = "broker_use_ssl=(json)"
# Beat runs there (amqps), 2 s apart, its ticks executed by that host's workers.
BEAT_HOST = "tl-debian-13"


def controller_file(name):
    with open(os.path.join(TLS_DIR, name)) as handle:
        return handle.read()


def key_line(name):
    """A line of a private key's base64 body: what would show if the key leaked."""
    return [line for line in controller_file(name).splitlines() if line and not line.startswith("-----")][0]


class TLSHost(CeleryHost):
    """Publishes and inspects the way the workers connect: with the TLS
    settings read from a worker's own command line."""

    def tls_settings(self):
        pid = self.main_pid("default")
        assert pid, "the default worker is not running"
        args = self.sh("cat /proc/%d/cmdline" % pid).stdout.split("\0")
        settings = [a[len(SETTING):] for a in args if a.startswith(SETTING)]
        assert len(settings) == 1, "the worker's command line has %d %s arguments: %r" % (len(settings), SETTING, args)
        return settings[0]

    _settings = None

    def in_app(self, command):
        # Read once; a worker without the setting gives none, and the checks
        # that publish then fail (a broker that speaks TLS only).
        if self._settings is None:
            try:
                self._settings = "export CELERY_TESTAPP_BROKER_USE_SSL=%s; " % shlex.quote(self.tls_settings())
            except AssertionError:
                self._settings = ""
        return self._settings + super().in_app(command)


@pytest.fixture
def celery(host):
    return TLSHost(host)


def test_the_workers_get_the_tls_settings_as_paths(celery):
    settings = json.loads(celery.tls_settings())
    if celery.manager == "systemd":  # amqps: py-amqp's names
        assert settings == {"ca_certs": INSTALLED + "/ca.pem", "cert_reqs": 2, "certfile": INSTALLED + "/client.pem",
                            "keyfile": INSTALLED + "/client.key", "server_hostname": None}, settings
    else:  # rediss: redis-py's names
        assert settings == {"ssl_ca_certs": INSTALLED + "/ca.pem", "ssl_cert_reqs": 2, "ssl_certfile": INSTALLED + "/client.pem",
                            "ssl_keyfile": INSTALLED + "/client.key", "ssl_check_hostname": True}, settings


def test_tasks_on_each_queue_are_executed_over_tls(celery):
    for worker, queues in celery.queues.items():
        wait(lambda: celery.ping(celery.node(worker)), 120, "ping of %s" % celery.node(worker))
        for queue in queues:
            done = celery.probe("call", "whoami", "--queue", queue, "--timeout", "60")
            assert done["state"] == "SUCCESS", done
            assert done["result"]["hostname"] == celery.hostname, done
    assert celery.probe("call", "add", "2", "3")["result"] == 5


def test_beat_publishes_through_the_tls_broker(host, celery):
    if celery.hostname != BEAT_HOST:
        assert celery.beat_pids() == [], "Beat runs on %s, not only on %s" % (celery.hostname, BEAT_HOST)
        return
    pids = wait(celery.beat_pids, 60, "Beat to run on %s" % BEAT_HOST)
    args = celery.sh("cat /proc/%d/cmdline" % pids[0]).stdout.split("\0")
    assert any(a.startswith(SETTING) for a in args), "Beat's command line has no %s: %r" % (SETTING, args)
    celery.probe("clear-ticks")

    def two_ticks():
        ticks = celery.probe("ticks")
        return len(ticks) >= 2 and ticks
    ticks = wait(two_ticks, 60, "two Beat ticks through the TLS broker")
    assert all(tick["hostname"] == BEAT_HOST for tick in ticks), ticks


def test_the_tls_files_are_readable_by_the_app_group_only(host):
    directory = host.file(INSTALLED)
    assert (directory.user, directory.group, directory.mode) == ("root", "testapp", 0o750)
    for name, source in (("ca.pem", "ca.pem"), ("client.pem", "client.pem"), ("client.key", "client.key")):
        installed = host.file("%s/%s" % (INSTALLED, name))
        assert (installed.user, installed.group, installed.mode) == ("root", "testapp", 0o640), name
        assert installed.content_string.strip() == controller_file(source).strip(), "%s is not the controller's %s" % (name, source)


def test_the_key_and_passwords_show_nowhere(host, celery):
    key = key_line("client.key")
    listing = celery.sh("ps -eww -o args").stdout
    assert SETTING in listing, "no worker's command line carries the TLS settings"
    files = ("/etc/systemd/system/testapp-*.service /etc/systemd/system/testapp.target" if celery.manager == "systemd"
             else "/etc/supervisor/conf.d/testapp*.conf")
    texts = {"ps": listing,
             "unit or program files": celery.sh("cat %s" % files).stdout,
             "logs": celery.sh("journalctl -q -o cat; cat /var/log/testapp/* 2>/dev/null", check=False).stdout}
    for where, text in texts.items():
        assert text, "nothing read from %s" % where
        for secret in (key, SECRET):
            assert secret not in text, "%s shows %s" % (where, "the client key" if secret == key else "a password")


@pytest.fixture(scope="module")
def refused_runs():
    """Site runs that must fail before any change, and a check run with a new
    client key, side by side (none of them changes anything)."""
    runs = {
        "wrong CA": ({"celery_broker_tls_ca_file": os.path.join(TLS_DIR, "wrong-ca.pem")}, {}),
        "client certificate of another CA": ({"celery_broker_tls_cert_file": os.path.join(TLS_DIR, "stranger.pem"),
                                              "celery_broker_tls_key_file": os.path.join(TLS_DIR, "stranger.key")}, {}),
        "new client key, check mode": ({"celery_broker_tls_cert_file": os.path.join(TLS_DIR, "client2.pem"),
                                        "celery_broker_tls_key_file": os.path.join(TLS_DIR, "client2.key")},
                                       {"check": True, "diff": True}),
    }
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_site, extra_vars, callback="ansible.builtin.json", **options)
                   for name, (extra_vars, options) in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def host_results(report, host):
    """[(task name, result)] of one host in a JSON report, in order."""
    return [(task["task"]["name"], task["hosts"][host]) for play in report["plays"] for task in play["tasks"]
            if host in task["hosts"]]


@pytest.mark.parametrize("case, variable, words", [
    ("wrong CA", "celery_broker_tls_ca_file", "certificate verify failed"),
    ("client certificate of another CA", "celery_broker_tls_cert_file", "refused the TLS connection over the client certificate"),
])
def test_a_certificate_problem_fails_before_any_change(host, refused_runs, case, variable, words):
    name = host.backend.get_hostname()
    before = host.file(INSTALLED + "/client.pem").content_string, host.run("stat -c %Y " + INSTALLED + "/ca.pem").stdout
    result = refused_runs[case]
    report = json_report(result)
    assert result.returncode != 0, "the play passed with the %s" % case
    results = host_results(report, name)
    failed = [(task, res.get("msg", "")) for task, res in results if res.get("failed")]
    assert failed, "nothing failed on %s with the %s" % (name, case)
    task, message = failed[0]
    assert variable in message and words in message and "Nothing was changed" in message, (task, message)
    assert not any(res.get("changed") for _task, res in results), "%s changed something before the error" % name
    assert report["stats"][name].get("changed", 0) == 0, report["stats"][name]
    after = host.file(INSTALLED + "/client.pem").content_string, host.run("stat -c %Y " + INSTALLED + "/ca.pem").stdout
    assert before == after
    for secret in (key_line("client.key"), key_line("stranger.key"), SECRET):
        assert secret not in result.stdout + result.stderr, "the play's output shows a secret (%s)" % case


def test_a_new_client_key_shows_as_a_change_but_not_its_text(host, refused_runs):
    name = host.backend.get_hostname()
    result = refused_runs["new client key, check mode"]
    report = json_report(result)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installs = [res for task, res in host_results(report, name) if task.endswith("Install the broker TLS files")]
    assert installs, "no install of the TLS files in the check run"
    changed = {item["item"]["name"] for item in installs[-1]["results"] if item.get("changed")}
    assert changed == {"client.pem", "client.key"}, changed
    for secret in (key_line("client2.key"), key_line("client.key"), SECRET):
        assert secret not in result.stdout + result.stderr, "the check run's output or diff shows a secret"
    assert host.file(INSTALLED + "/client.pem").content_string.strip() == controller_file("client.pem").strip(), \
        "check mode changed the client certificate"
