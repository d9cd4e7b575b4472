"""Markers that choose where a test runs in CI (see `tests/ci_budget.py`).

* `@pytest.mark.backend_independent`: the outcome does not depend on the
  Keras backend (argument parsing, file checks, docs, architecture of a
  network whose training step is tested on every backend elsewhere): it
  runs once, on torch, or on the backend named by `on=` (e.g.
  `on="tensorflow"` for a test that writes a SavedModel).
* `@pytest.mark.slow_on_jax`: building the network compiles one XLA program
  per weight shape on JAX (minutes); the test runs on TensorFlow and torch.

`KERAS_PCL_SLOW_TESTS=1` runs every test on every backend.
"""

import keras
import pytest

from tests import ci_budget

MARKERS = {
    "backend_independent": (
        "backend_independent(on='torch'): the outcome does not depend on "
        "the backend; CI runs it once, on `on` (tests/ci_budget.py)"
    ),
    "slow_on_jax": (
        "slow_on_jax: too slow to build on JAX; CI runs it on TensorFlow and "
        "torch (tests/ci_budget.py)"
    ),
}


def pytest_configure(config):
    for text in MARKERS.values():
        config.addinivalue_line("markers", text)


def runs_here(item, backend=None):
    """Whether `item`'s markers let it run on `backend` (today's by default)."""
    backend = backend or keras.backend.backend()
    if ci_budget.RUN_ALL:
        return True
    once = item.get_closest_marker("backend_independent")
    if once is not None and backend != once.kwargs.get("on", "torch"):
        return False
    if item.get_closest_marker("slow_on_jax") is not None and backend == "jax":
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=ci_budget.REASON)
    for item in items:
        if not runs_here(item):
            item.add_marker(skip)
