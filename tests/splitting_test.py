"""Cutting backbones into trunk and peer head."""

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.backbones import CIFARResNet
from keras_pcl.splitting import check_backbone
from keras_pcl.splitting import fresh_clone
from keras_pcl.splitting import recommended_split
from keras_pcl.splitting import split_backbone
from keras_pcl.splitting import split_candidates
from tests.testing import tiny_backbone


def test_trunk_then_head_is_the_backbone():
    backbone = tiny_backbone()
    trunk, head = split_backbone(backbone, "split")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(trunk(x))),
        keras.ops.convert_to_numpy(backbone(x)),
        rtol=1e-6,
    )
    assert trunk.count_params() + head.count_params() == backbone.count_params()


def test_candidates_are_the_single_tensor_cuts():
    backbone = CIFARResNet(depth=8)
    candidates = split_candidates(backbone)
    # Block outputs (before and after their ReLU) and the stem: nothing
    # inside a residual block, where the shortcut crosses.
    assert candidates == [
        "stem_conv",
        "stem_bn",
        "stem_relu",
        "stage1_block1_add",
        "stage1_block1_out",
        "stage2_block1_add",
        "stage2_block1_out",
        "stage3_block1_add",
        "stage3_block1_out",
    ]


def test_split_across_a_residual_connection_is_refused():
    backbone = CIFARResNet(depth=8)
    with pytest.raises(ValueError, match="does not cut the backbone in one tensor"):
        split_backbone(backbone, "stage3_block1_conv1")


def test_unknown_layer_lists_close_names():
    with pytest.raises(ValueError, match=r"Close matches: \['stage2_block1_out'"):
        split_backbone(CIFARResNet(depth=8), "stage2_block1_ou")


def test_sequential_backbone():
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(4, 3, name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
        ]
    )
    trunk, head = split_backbone(backbone, "relu1")
    assert trunk.output.shape == (None, 6, 6, 4)
    assert head.output.shape == (None, 4)


def test_fresh_clone_reinitialises_seeded_layers_and_prefixes_names():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotNormal(seed=1), name="d"
    )(inputs)
    model = keras.Model(inputs, outputs)
    a, b = fresh_clone(model, "a"), fresh_clone(model, "b")
    assert [l.name for l in a.layers][1:] == ["a_d"]
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])


def test_sequential_candidates_include_the_first_layer():
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
        ]
    )
    assert split_candidates(backbone) == ["conv1", "relu1"]


def skip_connection_backbone():
    """Hand-written functional model: conv, a residual block, pooling."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="res_conv")(x)
    y = keras.layers.BatchNormalization(name="res_bn")(y)
    x = keras.layers.Add(name="res_add")([x, y])
    x = keras.layers.ReLU(name="res_out")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="head_conv")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="skip")


def _fit_one_step_and_check_the_peer(backbone, split_at):
    keras.utils.set_random_seed(0)
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=3, num_peers=2, split_at=split_at
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    shape = (2,) + tuple(backbone.input.shape[1:])
    x = np.random.default_rng(0).integers(0, 256, shape).astype("uint8")
    history = model.fit(x, np.array([0, 1]), batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    peer = model.get_peer(1)
    assert peer.count_params() == backbone.count_params() + (
        backbone.output.shape[-1] * 3 + 3
    )
    model.deploy_peer = 1
    np.testing.assert_allclose(
        peer.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
    return model


def test_hand_written_skip_connection_model_end_to_end():
    backbone = skip_connection_backbone()
    candidates = split_candidates(backbone)
    assert candidates == ["stem", "res_add", "res_out", "head_conv"]
    with pytest.raises(ValueError, match="Received: split_at='res_conv'"):
        split_backbone(backbone, "res_conv")
    model = _fit_one_step_and_check_the_peer(backbone, "res_out")
    assert [l.name for l in model.peer_heads[0].layers[1:]] == [
        "peer_0_head_head_conv",
        "peer_0_head_pool",
    ]


@pytest.mark.backend_independent
def test_mobilenet_v2_end_to_end():
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    assert recommended_split(backbone) == "block_12_add"
    candidates = split_candidates(backbone)
    assert "block_12_add" in candidates and "block_15_add" in candidates
    # The latest candidate keeps the compiled step small; any of them works.
    _fit_one_step_and_check_the_peer(backbone, "block_15_add")


@pytest.mark.parametrize(
    "application, name",
    [
        (keras.applications.ResNet50, "conv4_block6_out"),
        (keras.applications.EfficientNetB0, "block5c_add"),
        # The README lists MobileNetV3: where its last (stride-2) stage begins.
        (keras.applications.MobileNetV3Small, "expanded_conv_7_add"),
        (keras.applications.MobileNetV3Large, "expanded_conv_11_add"),
    ],
)
@pytest.mark.slow_on_jax
def test_recommended_splits_for_keras_applications(application, name):
    backbone = application(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    assert recommended_split(backbone) == name
    assert name in split_candidates(backbone)
    trunk, head = split_backbone(backbone, name)
    assert trunk.count_params() + head.count_params() == backbone.count_params()
    # Errors quote the recommendation.
    with pytest.raises(ValueError, match=f"recommended split .* is '{name}'"):
        split_backbone(backbone, "no_such_layer")


def test_unknown_layer_of_an_unknown_model_lists_the_applications_splits():
    with pytest.raises(ValueError, match="MobileNetV2 'block_12_add'"):
        split_backbone(skip_connection_backbone(), "nope")


def test_split_inside_a_nested_model_is_refused_with_how_to_flatten():
    inner = skip_connection_backbone()
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(5, activation="relu", name="proj")(inner(inputs))
    nested = keras.Model(inputs, outputs, name="outer")
    with pytest.raises(
        ValueError,
        match=r"inside the nested model 'skip' .*flatten.*Received: split_at='res_out'",
    ):
        split_backbone(nested, "res_out")
    # Splitting at the nested model itself works.
    trunk, head = split_backbone(nested, "skip")
    assert head.output.shape == (None, 5)
    # The documented flattening: build on the nested model's tensors.
    flat = keras.Model(inner.input, nested.get_layer("proj")(inner.output))
    assert "res_out" in split_candidates(flat)
    split_backbone(flat, "res_out")


def _with_top(*top):
    backbone = skip_connection_backbone()
    x = backbone.output
    for layer in top:
        x = layer(x)
    return keras.Model(backbone.input, x)


@pytest.mark.parametrize(
    "top, layer",
    [
        ([keras.layers.Dense(10, name="logits")], "logits"),
        ([keras.layers.Dense(10, activation="softmax", name="probs")], "probs"),
        ([keras.layers.Dense(10, name="fc"), keras.layers.Softmax(name="sm")], "fc"),
        ([keras.layers.Dense(10, activation="sigmoid", name="multi")], "multi"),
    ],
)
def test_backbone_ending_in_a_classifier_is_refused(top, layer):
    backbone = _with_top(*top)
    with pytest.raises(
        ValueError,
        match=rf"ends in a classifier: layer '{layer}'.*get_layer\('pool'\)",
    ):
        check_backbone(backbone)
    with pytest.raises(ValueError, match="ends in a classifier"):
        keras_pcl.PeerCollaborativeModel(backbone, num_classes=3, split_at="stem")


def test_feature_layers_ending_in_dense_are_accepted():
    check_backbone(_with_top(keras.layers.Dense(10, activation="relu")))
    check_backbone(
        _with_top(keras.layers.Dense(10), keras.layers.Identity(name="features"))
    )


@pytest.mark.slow_on_jax
def test_keras_applications_with_top_is_refused():
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=True, input_shape=(32, 32, 3), classes=10
    )
    with pytest.raises(
        ValueError, match=r"include_top=False.*Received: backbone='mobilenetv2"
    ):
        check_backbone(backbone)


def scaling_backbone(image_size=8, name="scaling"):
    """`tiny_backbone` that begins with its own `Rescaling(1 / 255)`."""
    return tiny_backbone(image_size, name=name, own_rescaling=True)


def test_own_preprocessing_finds_a_leading_rescaling_or_normalization():
    from keras_pcl.splitting import own_preprocessing

    assert own_preprocessing(scaling_backbone()).name == "own_rescaling"
    assert own_preprocessing(tiny_backbone()) is None
    nested = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.Sequential([keras.layers.Normalization(mean=0, variance=1)]),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    assert isinstance(own_preprocessing(nested), keras.layers.Normalization)
    # A Rescaling deeper in the network is not preprocessing.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3)(inputs)
    x = keras.layers.Rescaling(2.0)(x)
    features = keras.layers.GlobalAveragePooling2D()(x)
    assert own_preprocessing(keras.Model(inputs, features)) is None


@pytest.mark.slow_on_jax
def test_own_preprocessing_of_keras_applications():
    from keras_pcl.splitting import own_preprocessing

    efficientnet = keras.applications.EfficientNetB0(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    assert isinstance(own_preprocessing(efficientnet), keras.layers.Rescaling)
    mobilenet = keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    assert own_preprocessing(mobilenet) is None  # Expects [-1, 1] inputs.
