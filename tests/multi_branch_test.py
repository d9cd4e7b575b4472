"""`keras_pcl.multi_branch`: preprocessing, peer initialisation, split choice.

What every method inherits from `MultiBranchModel`, checked on PCL (and on
a baseline where the methods differ).
"""

import warnings

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.views import PixelScaleWarning
from tests.splitting_test import scaling_backbone
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def weights(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


# ----------------------------------------------------------------------
# Preprocessing that cannot be doubled
# ----------------------------------------------------------------------


def test_a_backbone_with_its_own_rescaling_gets_no_second_one():
    x, _ = colour_dataset(4, seed=0)
    model = keras_pcl.PeerCollaborativeModel(scaling_backbone(), 3, split_at="split")
    assert isinstance(model.preprocessing, keras.layers.Identity)
    # What the trunk reads is the raw pixels (its own Rescaling divides).
    (view, *_) = model.peer_views(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(view), x.astype("f4"))
    deployed = model.get_peer(0)
    kinds = [type(layer).__name__ for layer in deployed.layers]
    assert kinds[:2] == ["InputLayer", "Identity"]
    # Round trip: the Identity is accepted back from the config.
    clone = keras_pcl.PeerCollaborativeModel.from_config(model.get_config())
    assert isinstance(clone.preprocessing, keras.layers.Identity)


def test_preprocessing_on_top_of_the_backbones_own_is_refused():
    with pytest.raises(ValueError, match="own_rescaling.*Rescaling layer 'mine'"):
        keras_pcl.PeerCollaborativeModel(
            scaling_backbone(),
            3,
            split_at="split",
            preprocessing=keras.layers.Rescaling(1 / 255, name="mine"),
        )


def fit_history(backbone, x, y, x_val, y_val):
    keras.utils.set_random_seed(7)
    model = keras_pcl.PeerCollaborativeModel(
        backbone(), 3, split_at="split", rampup_steps=8
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(
        x, y, batch_size=32, epochs=6, verbose=0, validation_data=(x_val, y_val)
    )
    return history.history


def test_own_rescaling_trains_exactly_like_the_default_preprocessing():
    """No double scaling: the run equals the standard one, step for step.

    A backbone that starts with `Rescaling(1/255)` under keras-pcl's default
    is the same function as the same backbone without it under the default
    `Rescaling(1/255)`: same initial weights (same seed, the layer has none),
    the same float32 product per pixel, so the same training run.
    """
    x, y = colour_dataset(128, seed=0)
    x_val, y_val = colour_dataset(128, seed=1)
    own = fit_history(scaling_backbone, x, y, x_val, y_val)
    default = fit_history(tiny_backbone, x, y, x_val, y_val)
    for key in default:
        # Identical arithmetic; float32 rounding of the logged means only.
        np.testing.assert_allclose(own[key], default[key], rtol=1e-5, err_msg=key)
    # Training moves: the summed cross-entropy falls (before the fix, the
    # doubled scaling left it flat: 2.776 -> 2.773 on JAX in issue #16).
    # That this setting learns the task is `model_test.py`'s
    # `test_learns_a_small_real_problem`; the two runs are the same run.
    assert own["ce"][-1] < 0.8 * own["ce"][0]


@pytest.mark.slow_on_jax
def test_keras_applications_preprocessing_is_not_doubled():
    backbone = keras.applications.EfficientNetB0(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    model = keras_pcl.PeerCollaborativeModel(backbone, 3, num_peers=2)
    assert isinstance(model.preprocessing, keras.layers.Identity)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    # The deployed network on raw pixels equals the backbone's own layers.
    deployed = model.get_peer(0, mean_teacher=False)
    trunk_and_head = keras.Sequential(
        [model.trunk, model.peer_heads[0], model.peer_classifiers[0]]
    )
    np.testing.assert_allclose(
        deployed.predict(x, verbose=0),
        keras.ops.convert_to_numpy(trunk_and_head(x.astype("f4"), training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------
# Peers from the backbone's weights
# ----------------------------------------------------------------------


def pretrained_backbone():
    """A backbone whose weights stand for pretrained ones (saved, reloaded)."""
    keras.utils.set_random_seed(3)
    return tiny_backbone()


def test_peers_start_from_the_backbone_weights():
    backbone = pretrained_backbone()
    want = weights(backbone)
    model = keras_pcl.PeerCollaborativeModel(
        backbone, 3, split_at="split", peer_initialization="backbone"
    )
    names = ("conv2", "bn2")
    backbone_head = [w for n in names for w in weights(backbone.get_layer(n))]
    for heads in (model.peer_heads, model.mean_teacher_heads):
        for head in heads:
            for got, expected in zip(weights(head), backbone_head):
                np.testing.assert_array_equal(got, expected)
    # The shared trunk is the backbone's own layers, as always.
    np.testing.assert_array_equal(weights(model.trunk)[0], want[0])
    fresh = keras_pcl.PeerCollaborativeModel(pretrained_backbone(), 3, split_at="split")
    assert not np.allclose(weights(fresh.peer_heads[0])[0], backbone_head[0])


def test_separate_networks_start_from_the_whole_backbone():
    backbone = pretrained_backbone()
    dml = keras_pcl.baselines.DMLModel(backbone, 3, peer_initialization="backbone")
    for network in dml.peer_heads:
        for got, expected in zip(weights(network), weights(backbone)):
            np.testing.assert_array_equal(got, expected)


def test_peer_perturbation_makes_the_copies_differ_by_the_given_scale():
    backbone = pretrained_backbone()
    kernel = weights(backbone.get_layer("conv2"))[0]
    model = keras_pcl.PeerCollaborativeModel(
        backbone,
        3,
        split_at="split",
        peer_initialization="backbone",
        peer_perturbation=0.1,
    )
    kernels = [weights(head)[0] for head in model.peer_heads]
    assert not np.allclose(kernels[0], kernels[1])
    for k in kernels:
        # Noise of 0.1 kernel standard deviations; 216 draws, so the sample
        # standard deviation is within 25% of 0.1 * std with ~1e-4 failure
        # odds. Batch norm (rank < 2) is copied unchanged.
        relative = np.std(k - kernel) / np.std(kernel)
        assert 0.075 < relative < 0.125
    bn = [weights(head)[1] for head in model.peer_heads]
    np.testing.assert_array_equal(bn[0], weights(backbone.get_layer("bn2"))[0])
    config = model.get_config()
    assert config["peer_initialization"] == "backbone"
    assert config["peer_perturbation"] == 0.1


def test_peer_initialization_arguments_are_checked():
    with pytest.raises(ValueError, match="peer_initialization='pretrained'"):
        keras_pcl.PeerCollaborativeModel(
            tiny_backbone(), 3, split_at="split", peer_initialization="pretrained"
        )
    with pytest.raises(ValueError, match="peer_initialization='backbone'"):
        keras_pcl.PeerCollaborativeModel(
            tiny_backbone(), 3, split_at="split", peer_perturbation=0.1
        )
    with pytest.raises(ValueError, match="peer_perturbation=-1"):
        keras_pcl.PeerCollaborativeModel(
            tiny_backbone(),
            3,
            split_at="split",
            peer_initialization="backbone",
            peer_perturbation=-1,
        )


def test_a_frozen_trunk_stays_put_and_its_mean_teacher_follows_it():
    """Fine-tuning the Keras way: freeze, compile, fit; unfreeze, compile, fit."""
    x, y = colour_dataset(32, seed=0)
    model = keras_pcl.PeerCollaborativeModel(
        pretrained_backbone(),
        3,
        split_at="split",
        peer_initialization="backbone",
        rampup_steps=2,
    )
    trunk_before = weights(model.trunk)
    teacher_stats_before = weights(model.mean_teacher_trunk)
    heads_before = weights(model.mean_teacher_heads[0])
    model.trunk.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for got, want in zip(weights(model.trunk), trunk_before):
        np.testing.assert_array_equal(got, want)  # Frozen, BN in inference mode.
    # Its mean teacher averages a constant: it stays equal to it (float32
    # rounding of a*w + (1-a)*w only), and its batch norm, like the
    # student's, runs in inference mode: moving statistics unchanged.
    for got, want in zip(weights(model.mean_teacher_trunk), teacher_stats_before):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(weights(model.mean_teacher_heads[0])[0], heads_before[0])

    model.trunk.trainable = True
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(weights(model.trunk)[0], trunk_before[0])
    assert not np.allclose(weights(model.mean_teacher_trunk)[0], trunk_before[0])
    assert all(not v.trainable for v in model.mean_teacher_trunk.weights)


# ----------------------------------------------------------------------
# The split point
# ----------------------------------------------------------------------


@pytest.mark.slow_on_jax
def test_split_at_none_uses_the_recommended_split_and_says_so(capsys):
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    model = keras_pcl.PeerCollaborativeModel(backbone, 3, num_peers=2)
    assert model.split_at == "block_12_add"
    assert "'block_12_add'" in capsys.readouterr().out


def test_split_at_none_without_a_recommendation_lists_the_candidates():
    with pytest.raises(ValueError, match="split_at.*is required.*'split'"):
        keras_pcl.PeerCollaborativeModel(tiny_backbone(), 3)


def test_split_at_none_for_an_unknown_family_suggests_its_last_stage():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU(name="stage1_out")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, x, name="unknown_family")
    with pytest.raises(ValueError) as error:
        keras_pcl.PeerCollaborativeModel(backbone, 3)
    message = str(error.value)
    assert "e.g. split_at='stage1_out' (the last layer before the final" in message
    assert "The 4 layers it can be split at: ['conv1', 'stage1_out'" in message


# ----------------------------------------------------------------------
# In-memory data checked before the first step: pixel scale, empty arrays;
# a schedule longer than the run that `fit` starts.
# ----------------------------------------------------------------------


def caught(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return records


def compiled_model(**kwargs):
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), 3, num_peers=2, split_at="split", **kwargs
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


@pytest.mark.parametrize(
    "method", ["fit", "evaluate", "predict", "train_on_batch", "test_on_batch"]
)
def test_images_scaled_to_zero_one_warn_before_any_step(method):
    x, y = colour_dataset(8, seed=0)
    model = compiled_model(rampup_steps=1, ema_decay=0.0)
    scaled = x.astype("float32") / 255
    args = (scaled,) if method == "predict" else (scaled, y)
    kwargs = dict(verbose=0) if method in ("fit", "evaluate", "predict") else {}
    records = caught(getattr(model, method), *args, **kwargs)
    pixel = [r for r in records if issubclass(r.category, PixelScaleWarning)]
    assert len(pixel) == 1 and "expects raw pixels in [0, 255]" in str(pixel[0].message)
    assert pixel[0].filename == __file__  # Points at the caller's line.
    records = caught(getattr(model, method), *((x,) + args[1:]), **kwargs)
    assert not [r for r in records if issubclass(r.category, PixelScaleWarning)]


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_an_empty_array_is_a_clear_error_on_every_backend(method):
    model = compiled_model()
    x = np.zeros((0, 8, 8, 3), "uint8")
    args = (x,) if method == "predict" else (x, np.zeros((0,), "int32"))
    with pytest.raises(ValueError, match=r"`x` has no examples"):
        getattr(model, method)(*args, verbose=0)


def test_fit_warns_when_the_schedule_outlasts_the_run_it_starts():
    x, y = colour_dataset(16, seed=0)
    model = compiled_model()  # The paper's defaults: 31,280 and 0.999.
    records = caught(model.fit, x, y, batch_size=8, epochs=2, verbose=0)
    messages = [str(r.message) for r in records]
    assert any(
        "`rampup_steps=31280` is longer than the run that this `fit` starts "
        "(4 steps)" in m
        for m in messages
    )
    assert any("`ema_decay=0.999` averages" in m for m in messages)
    # Training on: a later `fit` is not the whole run.
    records = caught(model.fit, x, y, batch_size=8, epochs=1, verbose=0)
    assert not [r for r in records if "rampup_steps" in str(r.message)]
    # A schedule that fits the run: no warning.
    fitting = compiled_model(rampup_steps=4, ema_decay=0.0)
    assert fitting._schedule_warnings(4) == []


def test_logged_terms_average_the_examples_as_the_loss_does():
    # Batches of 4, 4 and 2: each term is weighted by its batch size, as
    # Keras weights `loss`, so the mean over batches is the mean over the
    # 10 examples whatever the batching (inference: no batch statistics).
    x, y = colour_dataset(10, seed=0)
    model = compiled_model()
    batched = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    whole = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    for name in ("loss", "ce", "pe", "pm"):
        # float32 means of 10 values of order 1: a few ulps of 1.
        assert batched[name] == pytest.approx(whole[name], rel=1e-5), name
    assert batched["loss"] >= batched["ce"]
