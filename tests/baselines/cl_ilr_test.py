"""`keras_pcl.baselines.CLILRModel`: the trunk gradient is divided by `m`.

Spec section 9.
"""

import keras
import numpy as np

from keras_pcl import baselines
from keras_pcl.baselines import cl_ilr
from tests.testing import EPS32
from tests.testing import colour_dataset
from tests.testing import gradients
from tests.testing import tiny_backbone


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    value = keras.ops.convert_to_numpy(cl_ilr.scale_gradient(x, 0.25))
    np.testing.assert_allclose(value, x, rtol=1e-6)
    (g,) = gradients(lambda t: keras.ops.sum(cl_ilr.scale_gradient(t, 0.25) * 3.0), [x])
    np.testing.assert_allclose(g, np.full_like(x, 0.75), rtol=1e-6)


def trainable_weights_of(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.trainable_weights]


def one_sgd_step(model, x, y):
    """How far one SGD step moves each trainable weight of trunk and heads."""
    layers = (model.trunk, *model.peer_heads)
    before = [trainable_weights_of(layer) for layer in layers]
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    after = [trainable_weights_of(layer) for layer in layers]
    return [
        [a - b for a, b in zip(layer_after, layer_before)]
        for layer_after, layer_before in zip(after, before)
    ]


def test_cl_ilr_divides_the_trunk_gradient_by_the_number_of_branches(monkeypatch):
    x, y = colour_dataset(16)
    keras.utils.set_random_seed(3)
    scaled = baselines.CLILRModel(
        tiny_backbone(),
        3,
        num_peers=3,
        split_at="split",
        augmentation=None,
        rampup_steps=0,
    )
    plain = baselines.CLILRModel.from_config(scaled.get_config())
    plain.set_weights(scaled.get_weights())
    scaled_steps = one_sgd_step(scaled, x, y)
    monkeypatch.setattr(cl_ilr, "scale_gradient", lambda t, s: t)
    plain_steps = one_sgd_step(plain, x, y)
    # SGD without momentum: a weight moves by -lr * gradient.
    assert len(scaled_steps[0]) == 3  # conv kernel, BN gamma and beta.
    # A step is read back as (w - lr * g) - w in float32: rounding the new
    # weight costs up to half an ulp of w (6e-8 to 1.2e-7 for BN's gamma
    # near 1, above the old atol=1e-7), in each of the two runs: atol =
    # 2 ulps of max |w|. rtol: the two runs sum the branch gradients in
    # another grouping; a missing or doubled 1/3 is off by 67% or more.
    layers = (scaled.trunk, *scaled.peer_heads)
    weights = [trainable_weights_of(layer) for layer in layers]
    for a, b, w in zip(scaled_steps[0], plain_steps[0], weights[0]):
        assert np.abs(b).max() > 0
        atol = 2 * EPS32 * np.abs(w).max()
        np.testing.assert_allclose(a, b / 3, rtol=1e-3, atol=atol)
    for head_scaled, head_plain, head_w in zip(
        scaled_steps[1:], plain_steps[1:], weights[1:]
    ):
        for a, b, w in zip(head_scaled, head_plain, head_w):
            atol = 2 * EPS32 * np.abs(w).max()
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol)
