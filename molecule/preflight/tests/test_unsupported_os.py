"""A host whose distribution or version the collection does not support fails
the first check of the play, before any change on it, with a message that
names what it runs and what is supported; celery_allow_unsupported_os: true
provisions it anyway.

The host (preflight-other-os, group celery_os_check) is a Debian 12 container
whose /etc/os-release (and /etc/debian_version) these checks rewrite: first
another distribution, then an unsupported Debian version. The checks run in
order on one xdist worker; the last one provisions the host for real and
proves it with a task through the broker."""
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

from celery_checks import CeleryHost, run_site
from failed_tasks import assert_failed_with

testinfra_hosts = ["ansible://celery_os_check"]
pytestmark = pytest.mark.xdist_group("unsupported_os")

HOSTS = {"celery_hosts": "celery_os_check"}
MARKER = "/root/.unsupported-os-marker"
WATCHED = "/etc /srv /var/lib /var/log /usr/local /opt /home"
IGNORED = ("/var/lib/systemd/", "/var/log/journal/", "/var/lib/apt/", "/var/lib/dpkg/", "/var/log/apt/",
           "/etc/os-release", "/etc/debian_version")
SUPPORTED = "supported: Debian 12, 13; Ubuntu 22.04, 24.04"

OS_RELEASES = {
    "another distribution": (
        'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
        'VERSION_ID="9.4"\nPRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n',
        None, "runs Rocky Linux 9.4 (Blue Onyx)"),
    "an unsupported Debian version": (
        'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nNAME="Debian GNU/Linux"\nVERSION_ID="11"\n'
        'VERSION="11 (bullseye)"\nVERSION_CODENAME=bullseye\nID=debian\n',
        "11.11", "runs Debian 11.11 (bullseye)"),
}


def pretend(host, os_release, debian_version):
    """Make the host claim another platform, then mark the time: only what the
    play does afterwards counts as a change."""
    script = "rm -f /etc/os-release && printf '%%s' %s > /etc/os-release" % _quote(os_release)
    if debian_version:
        script += " && echo %s > /etc/debian_version" % debian_version
    host.run_expect([0], script)
    host.run_expect([0], "touch %s && sleep 1" % MARKER)


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def changed_paths(host):
    out = host.check_output("find %s -xdev -newer %s 2>/dev/null || true" % (WATCHED, MARKER))
    return [p for p in out.splitlines() if p and not (p + "/").startswith(IGNORED) and p not in IGNORED]


@pytest.mark.parametrize("case", sorted(OS_RELEASES))
@pytest.mark.parametrize("playbook", ["celeryops.celery.site", "celeryops.celery.release"])
def test_an_unsupported_platform_fails_before_any_change(host, case, playbook):
    os_release, debian_version, found = OS_RELEASES[case]
    pretend(host, os_release, debian_version)
    extra = dict(HOSTS)
    if playbook.endswith("release"):
        extra["celery_release_src"] = "/nonexistent-release-src"  # never reached: the platform check comes first
    result = run_site(extra, playbook=playbook)
    assert_failed_with(result, ["%s %s" % (host.backend.host, found), "does not support", SUPPORTED,
                                "celery_allow_unsupported_os: true"], case)
    assert changed_paths(host) == [], "the host changed before the error (%s)" % case
    assert host.run("getent passwd testapp").rc != 0, "the app user was created"


def test_the_override_provisions_the_host_anyway(host):
    # Last: the host claims Debian 11. The test app's code is the user's
    # business (as in prepare.yml), then the site playbook with the override.
    os_release, debian_version, found = OS_RELEASES["an unsupported Debian version"]
    pretend(host, os_release, debian_version)
    src = os.path.join(HERE, "..", "..", "..", "tests", "testapp", "celery_testapp")
    copied = host.ansible("ansible.builtin.copy", "src=%s dest=/srv/testapp/current/ owner=root group=root mode=u=rwX,go=rX"
                          % os.path.abspath(src), check=False, become=True)
    assert not copied.get("failed"), copied
    result = run_site(dict(HOSTS, celery_allow_unsupported_os=True))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "proceeding because celery_allow_unsupported_os is true" in output
    celery = CeleryHost(host)
    celery.wait_for(lambda: celery.ping(celery.node("default")), 90, "the worker to answer ping", interval=1)
    answer = celery.probe("call", "whoami", "--timeout", "60")
    assert answer["state"] == "SUCCESS", answer
    assert answer["result"]["hostname"] == celery.hostname
