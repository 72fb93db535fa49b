"""Which of the release checks run: all of them, in file order, unless
CELERYOPS_RELEASE_CHECKS_PART names one part.

- `switches`: the checks marked `switches`: release v1 as converged, then
  the overlap release and the rollback. Those two bound each host's pause
  against the same stream a moment before, so they need a machine that
  nothing else loads. They come first: the others start from the release
  they leave.
- `rest`: every other check. None of them bounds a time, so they may share
  the machine (the test run runs them beside other scenarios)."""
import os

import pytest

PARTS = ("switches", "rest")


def pytest_configure(config):
    config.addinivalue_line("markers", "switches: a release check of the first part, on a machine nothing else loads")


def pytest_collection_modifyitems(config, items):
    part = os.environ.get("CELERYOPS_RELEASE_CHECKS_PART", "")
    if not part:
        return
    if part not in PARTS:
        raise pytest.UsageError("CELERYOPS_RELEASE_CHECKS_PART must be one of %s, not %r" % (", ".join(PARTS), part))
    keep = [item for item in items if (item.get_closest_marker("switches") is not None) == (part == "switches")]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
