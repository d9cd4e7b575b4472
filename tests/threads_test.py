"""`keras_pcl.threads`: a larger TensorFlow inter-op pool, the same numbers."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_pcl import threads
from tests.testing import assert_trained_bitwise_alike

BACKEND = keras.backend.backend()
SCRIPT = os.path.join(os.path.dirname(__file__), "threaded_step.py")
CORES = len(os.sched_getaffinity(0))
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow's thread pools"
)


@pytest.mark.parametrize("num_peers", [0, -1, 2.0, True, "3"])
def test_a_bad_num_peers_is_refused(num_peers):
    with pytest.raises(ValueError, match="`num_peers` must be an int >= 1"):
        threads.configure_tensorflow_threads(num_peers)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="other backends")
def test_other_backends_are_left_alone():
    assert threads.configure_tensorflow_threads(CORES + 1) is None


@tensorflow_only
def test_enough_cores_or_a_chosen_pool_is_left_alone(monkeypatch):
    keras.ops.ones(())  # TensorFlow runs: any change would now raise.
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    assert threads.configure_tensorflow_threads(CORES) is None
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "2")
    assert threads.configure_tensorflow_threads(CORES + 1) is None


@tensorflow_only
def test_too_late_is_an_error_that_says_when_to_call_it(monkeypatch):
    keras.ops.ones(())  # TensorFlow has run an op in this process.
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    with pytest.raises(RuntimeError, match="before building any model"):
        threads.configure_tensorflow_threads(CORES + 1)


@tensorflow_only
def test_the_configured_pool_trains_bitwise_the_same(tmp_path):
    """Two PCL steps in two fresh processes: the pool set vs TensorFlow's own.

    Only how many ops run at once differs; each op splits its sums over the
    same intra-op pool, so every weight and log must be bitwise equal.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_NUM_INTEROP_THREADS", None)
    outs = {name: tmp_path / f"{name}.npz" for name in ("configured", "default")}
    runs = {
        name: subprocess.Popen(
            [sys.executable, SCRIPT, str(out)]
            + (["configure"] if name == "configured" else []),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, out in outs.items()
    }
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}: {stderr[-3000:]}"
    configured, default = (np.load(outs[n]) for n in ("configured", "default"))
    assert int(configured["configured"]) == CORES + 1
    assert int(configured["inter_op"]) == CORES + 1
    assert int(default["inter_op"]) == 0  # TensorFlow's default pool.
    assert_trained_bitwise_alike(configured, default)
