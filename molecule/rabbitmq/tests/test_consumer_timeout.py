"""What celery_broker_redelivery_timeout guards against, shown on RabbitMQ: a
task that outlives the broker's consumer_timeout while its worker drains is
taken from that worker and runs a second time; and the collection refuses a
stop window at or above the timeout, before any change.

The broker here is the scenario's second RabbitMQ, rq-short-timeout, whose
consumer_timeout is 5 s (prepare.yml); the scenario's workers use the other,
which keeps the 30 min default. Two workers started by hand on one host share
a queue on it."""
import shlex

import pytest

from celery_checks import CeleryHost, outlive_the_redelivery_timeout, redelivery_window_refusals, task_attempts, wait

testinfra_hosts = ["ansible://rq-debian-12"]
# Beside the host's shared checks, not after them: it waits minutes on
# RabbitMQ, and its workers are its own (another broker, another queue).
pytestmark = pytest.mark.xdist_group("consumer_timeout")

BROKER = "rq-short-timeout"
CONSUMER_TIMEOUT = 5
QUEUE = "redeliver"
# How Celery logs RabbitMQ dropping a worker's channel or connection.
DROPPED = ("PRECONDITION_FAILED", "timed out", "Connection reset by peer", "Socket was disconnected", "Connection to broker lost")


class ShortTimeoutHost(CeleryHost):
    """Publishes, inspects and runs workers on the short-timeout broker: the
    app's environment, then a file that points CELERY_BROKER_URL there (a
    file, so that the password shows on no command line)."""

    override = "/var/lib/testapp/short-timeout-broker.env"

    def in_app(self, command):
        return super().in_app("sh -c %s" % shlex.quote('set -a; . %s; set +a; exec "$0" "$@"' % self.override)
                              + " " + command)


def start_bare_worker(celery, name):
    command = celery.in_app(".venv/bin/celery -A celery_testapp worker -n %s@%%h -Q %s -P threads -c 1 --loglevel=INFO"
                            " --without-mingle --without-gossip" % (name, QUEUE))
    celery.sh("nohup runuser -u %s -- sh -c %s >/tmp/%s.log 2>&1 &" % (celery.user, shlex.quote(command), name))
    wait(lambda: celery.ping(celery.node(name)), 120, "ping of %s" % celery.node(name))


def test_a_task_outliving_the_consumer_timeout_while_its_worker_drains_runs_twice(host):
    celery = ShortTimeoutHost(host)
    variables = host.ansible.get_variables()
    url = "amqp://%s:%s@%s:5672/%s" % (
        variables["celery_test_broker_user"], variables["celery_test_broker_password"], BROKER, host.backend.get_hostname())
    celery.sh("umask 077 && printf 'CELERY_BROKER_URL=%%s\\n' %s > %s && chown %s %s"
              % (shlex.quote(url), celery.override, celery.user, celery.override))
    try:
        # RabbitMQ looks for deliveries past consumer_timeout on a timer of
        # its own: the task came back 172 s after the drain began here, with
        # a second scenario beside this one.
        with outlive_the_redelivery_timeout(celery, start_bare_worker, QUEUE) as (task_id, drainer, _other, seconds):
            print("%s: the task held by the draining worker ran again on the other one %.0f s after the drain began"
                  " (consumer_timeout %d s)" % (celery.hostname, seconds, CONSUMER_TIMEOUT))
            assert task_attempts(celery, task_id) == 2
            # RabbitMQ closed the draining worker's channel (406
            # PRECONDITION_FAILED, "delivery acknowledgement ... timed out"),
            # which Celery sees as its connection dropping under it.
            drained = celery.sh("cat /tmp/%s.log" % drainer).stdout
            assert any(sign in drained for sign in DROPPED), (
                "the draining worker's log shows none of %s:\n%s" % (DROPPED, drained[-3000:]))
    finally:
        celery.sh("rm -f %s" % celery.override)
    # The collection refuses that window: a stop timeout (120 s here) at or
    # above the redelivery timeout fails before any change, and says what
    # RabbitMQ would do.
    messages = redelivery_window_refusals(host, CONSUMER_TIMEOUT)
    assert any("celery_stop_timeout (120 s) must be below celery_broker_redelivery_timeout (%d s, as set)" % CONSUMER_TIMEOUT in m
               and "consumer_timeout" in m and "loses its channel" in m for m in messages), messages
