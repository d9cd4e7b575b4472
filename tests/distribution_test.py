"""Data-parallel training equals single-device training; XLA equals no XLA."""

import os

import keras
import numpy as np
import pytest

import keras_pcl
from tests.testing import colour_dataset
from tests.testing import float32_atol
from tests.testing import kd_magnitude
from tests.testing import run_npz_script
from tests.testing import sgd_weights_atol
from tests.testing import tiny_backbone

BACKEND = keras.backend.backend()
SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_step.py")


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras' torch backend has no multi-device data parallelism "
    "(see docs/performance.md)",
)
def test_two_replicas_take_the_same_steps_as_one_device(tmp_path):
    env = {}
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    arrays = run_npz_script(SCRIPT, tmp_path / "steps.npz", env)
    # Same math, another summation order (per-replica partial sums that are
    # all-reduced): the logged terms agree to a few float32 ulps of the
    # quantities summed (see tests/testing.py: float32_atol), not of each
    # term. pe and pm are sums of m KD terms, each a small difference of
    # sums of size T**2 * log(C) (kd_magnitude ~ 59 here, while pe ~ 0.01,
    # which is why rtol=1e-5 failed with pe 0.0125538 vs 0.0125543 on
    # AVX-512); ce is a sum of positive cross entropies (magnitude: ce);
    # loss = ce + w * (pe + pm) with w <= 1. k = 8 ulps: each logged value
    # is also a running mean over batches of a sum over heads, a few more
    # roundings of the result; the largest errors seen are 0.07 ulp of
    # kd_magnitude on pe (TensorFlow, Xeon) and 1 ulp of ce on ce (XLA test
    # below). That is atol 5.7e-5 on pe and pm (~1% of pe ~ 0.005-0.013
    # here) and 1.2e-4 on the loss: the doubled-gradient bug this test was
    # written for (loss 8.93 vs 4.43) is 4e4 times that.
    kd = kd_magnitude(temperature=3.0, num_classes=3, num_terms=3)
    ce = np.max(np.abs(arrays["single_log_ce"]))
    magnitudes = {"loss": ce + 2 * kd, "ce": ce, "pe": kd, "pm": kd}
    for key, magnitude in magnitudes.items():
        np.testing.assert_allclose(
            arrays[f"parallel_log_{key}"],
            arrays[f"single_log_{key}"],
            rtol=0,
            atol=float32_atol(magnitude, k=8),
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
        single = arrays[f"single_weight_{name}"]
        parallel = arrays[f"parallel_weight_{name}"]
        if single.ndim == 0:
            # The step counter and the best-peer record: exact.
            np.testing.assert_array_equal(parallel, single, err_msg=name)
            continue
        # Two SGD steps in another summation order: a few ulps of the weight
        # and of the update, each gradient entry a sum over the global batch
        # (8) x 8 x 8 positions (see sgd_weights_atol). Largest error seen:
        # 2.4 of the 16 ulps allowed (a head-conv bias, TensorFlow).
        np.testing.assert_allclose(
            parallel,
            single,
            rtol=0,
            atol=sgd_weights_atol(
                single, arrays[f"initial_weight_{name}"], summed_terms=8 * 8 * 8
            ),
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
        initial = model.get_weights()
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append((history.history, model.get_weights()))
    (graph_logs, graph_weights), (xla_logs, xla_weights) = results
    # XLA fuses and reorders the float32 sums: the same tolerances as for two
    # replicas (see test_two_replicas_take_the_same_steps_as_one_device).
    # Largest errors seen: 1 ulp of ce on ce, 1.5 ulps of 1.0 on pe, and
    # 0.08 of the weight tolerance (4 steps through batch norm).
    kd = kd_magnitude(temperature=3.0, num_classes=3, num_terms=3)
    ce = max(abs(v) for v in graph_logs["ce"])
    magnitudes = {"loss": ce + 2 * kd, "ce": ce, "pe": kd, "pm": kd}
    for key, magnitude in magnitudes.items():
        np.testing.assert_allclose(
            xla_logs[key],
            graph_logs[key],
            rtol=0,
            atol=float32_atol(magnitude, k=8),
            err_msg=key,
        )
    for a, b, w0 in zip(xla_weights, graph_weights, initial):
        if np.ndim(b) == 0:
            np.testing.assert_array_equal(a, b)  # step counter, best-peer record
            continue
        np.testing.assert_allclose(
            a, b, rtol=0, atol=sgd_weights_atol(b, w0, summed_terms=8 * 8 * 8)
        )
