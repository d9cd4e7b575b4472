"""Training under Keras mixed-precision policies."""

import keras
import numpy as np
import pytest

import keras_pcl
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_trains_with_float32_losses_and_mean_teachers(policy):
    keras.utils.set_random_seed(0)
    x, y = colour_dataset(48)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), num_classes=3, split_at="split", rampup_steps=2
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    if policy == "mixed_float16":  # Keras wraps it for loss scaling.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for key in ("loss", "ce", "pe", "pm"):
        assert np.all(np.isfinite(history.history[key])), (key, history.history)
    assert history.history["ce"][-1] < history.history["ce"][0]

    compute = "float16" if policy == "mixed_float16" else "bfloat16"
    assert model.trunk.layers[1].compute_dtype == compute
    for teacher in model._mean_teachers():
        for variable in teacher.weights:
            assert variable.dtype == "float32", variable.path
    outputs = model(x[:4], training=True)
    for logits in outputs["peer_logits"] + outputs["mean_teacher_logits"]:
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert (
        keras.backend.standardize_dtype(model.predict(x[:4], verbose=0).dtype)
        == "float32"
    )
    for variable, value in zip(model.weights, model.get_weights()):
        if "best_peer_score" not in variable.path:  # -inf until recorded
            assert np.all(np.isfinite(value)), variable.path
