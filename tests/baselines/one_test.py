"""`keras_pcl.baselines.ONEModel`: the gated teacher (spec section 9)."""

import keras
import numpy as np

from keras_pcl import baselines
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def test_one_teacher_is_the_gate_weighted_sum_of_branch_logits():
    x, _ = colour_dataset(8)
    model = baselines.ONEModel(tiny_backbone(), 3, num_peers=3, split_at="split")
    outputs = model._inference_outputs(x)
    images = model.preprocessing(keras.ops.cast(x, "float32"))
    gates = keras.ops.convert_to_numpy(
        model.gate(model.trunk(images, training=False), training=False)
    )
    assert gates.shape == (8, 3)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-5)
    branch = [model.get_peer(j).predict(x, verbose=0) for j in range(3)]
    want = sum(gates[:, i : i + 1] * branch[i] for i in range(3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["gated_logits"]), want, rtol=1e-4, atol=1e-5
    )
