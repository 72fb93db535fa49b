"""Runs the mutants of one Molecule scenario (tests/mutants/<scenario>.yml).

The scenario is converged once with the collection as built. Each round runs
on a copy of the installed collection with the round's mutations applied
(and converges with it when the round says so), runs the named checks with
`molecule verify` (pytest -k through PYTEST_ADDOPTS), and compares the
outcome with the one the round expects. Then the scenario is destroyed.
Exit status 0 when every round had the outcome it expects.
"""
import os
import shutil
import subprocess
import sys
import time

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.environ.get("CELERYOPS_CACHE_DIR") or os.path.join(REPO, ".cache")


def main(scenario, only=None):
    with open(os.path.join(REPO, "tests", "mutants", scenario + ".yml")) as handle:
        rounds = [entry for entry in yaml.safe_load(handle) if not only or only in entry["name"]]
    if not rounds:
        raise SystemExit("no mutant of %s is named like %r" % (scenario, only))
    built = os.path.join(CACHE, "collections")
    work = os.path.join(CACHE, "mutants", scenario)
    copy = os.path.join(work, "collections")
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(work, "log.txt")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=copy)

    with open(log_path, "w") as log:
        def say(text):
            line = "[%s] %s" % (time.strftime("%H:%M:%S"), text)
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        def molecule(command, checks=None):
            extra = {"PYTEST_ADDOPTS": "-k %r" % checks} if checks else {}
            start = time.time()
            proc = subprocess.run(["molecule", command, "--scenario-name", scenario], cwd=REPO,
                                  env=dict(env, **extra), capture_output=True, text=True, check=False)
            log.write(proc.stdout + proc.stderr)
            say("molecule %s%s: rc %d in %.0f s"
                % (command, " -k %r" % checks if checks else "", proc.returncode, time.time() - start))
            return proc

        def install(mutations):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(built, copy, symlinks=True)
            for mutation in mutations:
                path = os.path.join(copy, "ansible_collections", "celeryops", "celery", mutation["file"])
                with open(path) as handle:
                    text = handle.read()
                if text.count(mutation["replace"]) != 1:
                    raise SystemExit("%s: the text to replace is there %d times, not once: %r"
                                     % (mutation["file"], text.count(mutation["replace"]), mutation["replace"]))
                with open(path, "w") as handle:
                    handle.write(text.replace(mutation["replace"], mutation["with"]))

        outcomes = []
        install([])
        if molecule("converge").returncode != 0:
            molecule("destroy")
            raise SystemExit("the scenario did not converge with the collection as built; see %s" % log_path)
        for entry in rounds:
            install(entry["mutations"])
            if entry.get("converge"):
                molecule("converge")
            proc = molecule("verify", entry["checks"])
            # pytest's last line, e.g. "=== 2 failed, 30 deselected in 95.1s ===": a check must have run
            # and failed (or passed); no check selected, or an error in setup, is not what a round proves.
            summary = ([line for line in (proc.stdout + proc.stderr).splitlines()
                        if line.startswith("=") and " in " in line] or ["(no pytest summary)"])[-1]
            got = "fail" if " failed" in summary else "pass" if proc.returncode == 0 and " passed" in summary else "error"
            say("%s: expected %s, got %s: %s" % (entry["name"], entry["expect"], got, summary))
            for line in (proc.stdout + proc.stderr).splitlines():
                if line.startswith("E ") and ("Error" in line or "assert" in line):
                    say("    " + line[:300])
            outcomes.append(got == entry["expect"])
        install([])
        molecule("destroy")
        say("%d of %d rounds as expected; log: %s" % (sum(outcomes), len(outcomes), log_path))
        return 0 if all(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
