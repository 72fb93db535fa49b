"""Reading a play's failures from its output: the checks here match the
message of the task that failed, not any line of the output."""
import json
import os
import re
import subprocess

FATAL = re.compile(r"^fatal: \[([^\]]+)\]: FAILED! => (\{.*\})\s*$", re.M)


def failed_messages(output, host=None):
    """The `msg` of every failed task (of `host`, when given), in order."""
    messages = []
    for match in FATAL.finditer(output):
        if host is not None and match.group(1) != host:
            continue
        result = json.loads(match.group(2))
        messages.append(str(result.get("msg", "")))
    return messages


def assert_failed_with(result, words, what):
    """The play failed, and one failed task's message holds every one of words."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, "the play succeeded (%s):\n%s" % (what, output[-3000:])
    messages = failed_messages(output)
    assert messages, "no task failed (%s), the play stopped otherwise:\n%s" % (what, output[-3000:])
    assert any(all(w in m for w in words) for m in messages), (
        "no failed task says %r (%s); they say:\n%s" % (words, what, "\n".join(messages)))
    return messages


def run_playbook(playbook, extra_vars=None, args=()):
    """ansible-playbook against the scenario's hosts, with further arguments
    (e.g. --tags); returns the CompletedProcess."""
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], playbook,
           "-e", json.dumps(extra_vars or {})] + list(args)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
