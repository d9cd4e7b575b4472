"""Data-parallel training equals single-device training; XLA equals no XLA."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pcl
from tests.testing import colour_dataset
from tests.testing import tiny_backbone

BACKEND = keras.backend.backend()
SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_step.py")


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras' torch backend has no multi-device data parallelism "
    "(see README: Backend notes)",
)
def test_two_replicas_take_the_same_steps_as_one_device(tmp_path):
    out = tmp_path / "steps.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run(
        [sys.executable, SCRIPT, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    arrays = np.load(out)
    for key in ("loss", "ce", "pe", "pm"):
        np.testing.assert_allclose(
            arrays[f"parallel_log_{key}"],
            arrays[f"single_log_{key}"],
            rtol=1e-5,
            err_msg=key,
        )
    names = [
        k[len("single_weight_") :]
        for k in arrays.files
        if k.startswith("single_weight_")
    ]
    assert any("mean_teacher" in n for n in names)
    assert any("pcl_step" in n for n in names)
    for name in names:
        np.testing.assert_allclose(
            arrays[f"parallel_weight_{name}"],
            arrays[f"single_weight_{name}"],
            atol=1e-6,
            err_msg=name,
        )


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="JAX always compiles with XLA; jit_compile on torch is torch.compile",
)
def test_xla_compiled_steps_equal_graph_steps():
    """What a TPU runs (XLA, several steps per execution) gives the same numbers."""
    x, y = colour_dataset(32, seed=0)
    results = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(4)
        model = keras_pcl.PeerCollaborativeModel(
            tiny_backbone(),
            num_classes=3,
            split_at="split",
            augmentation=None,
            rampup_steps=3,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            jit_compile=jit_compile,
            steps_per_execution=2,
        )
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append((history.history, model.get_weights()))
    (graph_logs, graph_weights), (xla_logs, xla_weights) = results
    for key in ("loss", "ce", "pe", "pm"):
        np.testing.assert_allclose(xla_logs[key], graph_logs[key], rtol=1e-5)
    for a, b in zip(xla_weights, graph_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
