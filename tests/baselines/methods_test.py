"""What makes each baseline that method (spec section 9)."""

import keras
import numpy as np
import pytest

from keras_pcl import baselines
from keras_pcl.baselines import cl_ilr
from tests.testing import colour_dataset
from tests.testing import gradients
from tests.testing import tiny_backbone
from tests.testing import weights_of


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
        tiny_backbone(), 3, num_peers=3, split_at="split", augmentation=None,
        rampup_steps=0,
    )
    plain = baselines.CLILRModel.from_config(scaled.get_config())
    plain.set_weights(scaled.get_weights())
    scaled_steps = one_sgd_step(scaled, x, y)
    monkeypatch.setattr(cl_ilr, "scale_gradient", lambda t, s: t)
    plain_steps = one_sgd_step(plain, x, y)
    # SGD without momentum: a weight moves by -lr * gradient.
    assert len(scaled_steps[0]) == 3  # conv kernel, BN gamma and beta.
    for a, b in zip(scaled_steps[0], plain_steps[0]):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b / 3, rtol=1e-3, atol=1e-7)
    for head_scaled, head_plain in zip(scaled_steps[1:], plain_steps[1:]):
        for a, b in zip(head_scaled, head_plain):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7)


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


@pytest.mark.parametrize("m", [2, 4])
def test_okddip_attention_mixes_the_auxiliary_peers_and_the_leader_deploys(m):
    x, _ = colour_dataset(8)
    model = baselines.OKDDipModel(tiny_backbone(), 3, num_peers=m, split_at="split")
    assert model.deploy_peer == m - 1
    outputs = model._inference_outputs(x)
    attention = keras.ops.convert_to_numpy(outputs["attention"])
    assert attention.shape == (8, m - 1, m - 1)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, rtol=1e-5)
    assert len(outputs["peer_logits"]) == m - 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["leader_logits"]),
        model.get_peer(m - 1).predict(x, verbose=0), rtol=1e-4, atol=1e-5,
    )
    # Projections: features -> features / 8, no bias, shared by all peers.
    assert model.query_projection.kernel.shape == (6, 1)
    assert not model.query_projection.use_bias


@pytest.mark.parametrize("name", ["dml", "kdcl"])
def test_separate_networks_share_no_layer(name):
    model = baselines.get(name)(tiny_backbone(), 3, num_peers=2)
    assert model.trunk is None
    first, second = (weights_of(h)[0] for h in model.peer_heads)
    assert not np.allclose(first, second)  # Independent initialisations.
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))


def test_views_per_network_for_kdcl_and_one_view_for_dml():
    x, _ = colour_dataset(8)
    kdcl = baselines.KDCLModel(tiny_backbone(), 3, num_peers=3)
    views = [keras.ops.convert_to_numpy(v) for v in kdcl.peer_views(x, training=True)]
    assert not np.allclose(views[0], views[1])
    dml = baselines.DMLModel(tiny_backbone(), 3, num_peers=3)
    views = dml.peer_views(x, training=True)
    assert views[0] is views[1] is views[2]


def test_vanilla_is_the_backbone_and_a_classifier():
    model = baselines.VanillaModel(tiny_backbone(), 3)
    assert model.num_peers == 1
    network = model.get_peer(0)
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds == ["InputLayer", "Rescaling", "Functional", "Dense"]
    config = model.get_config()
    for fixed in ("num_peers", "split_at", "temperature", "rampup_steps"):
        assert fixed not in config
