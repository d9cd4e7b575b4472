"""KerasHub image backbones as PCL backbones (`keras_pcl.backbones.keras_hub`).

Presets cannot be downloaded here: every hub model is built from a small
config, and "a preset" is a local directory written by `save_to_preset`.
One small ResNet trains one PCL step (module fixture); the other tests build
models without training. The checks of other families' structure give the
same answer on every backend and cost 5-15 s each to build on JAX: they
run on TensorFlow and torch in CI (`slow_on_jax`, tests/ci_budget.py).
"""

import json
import os

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_pcl  # noqa: E402
from keras_pcl.backbones import keras_hub as pcl_hub  # noqa: E402
from keras_pcl.backbones.keras_hub import KerasHubBackbone  # noqa: E402
from keras_pcl.backbones.keras_hub import from_keras_hub  # noqa: E402
from keras_pcl.backbones.keras_hub import preprocessing_from_keras_hub  # noqa: E402

SHAPE = (16, 16, 3)


def small_resnet(**kwargs):
    """Three stacks of one basic block (KerasHub's first stack must be 64)."""
    kwargs.setdefault("image_shape", (None, None, 3))
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16],
        stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        **kwargs,
    )


def small_vit(image_shape=SHAPE):
    return keras_hub.models.ViTBackbone(
        image_shape=image_shape,
        patch_size=8,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        mlp_dim=4,
    )


def images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + SHAPE).astype("float32")


def pooled(hub, x):
    """What the PCL backbone must compute: the hub's feature map, averaged."""
    feature_map = keras.ops.convert_to_numpy(hub(x, training=False))
    return feature_map.mean(axis=(1, 2))


# ----------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------


def test_resnet_becomes_a_flat_pooled_backbone_split_at_its_last_stage():
    hub = small_resnet()
    backbone = from_keras_hub(hub, image_shape=SHAPE)
    assert isinstance(backbone, KerasHubBackbone)
    assert tuple(backbone.output.shape) == (None, 16)
    # The hub was built for any size: rebuilt at SHAPE, with its weights.
    assert tuple(backbone.input.shape[1:]) == SHAPE
    assert tuple(backbone.hub_backbone.input.shape[1:]) == SHAPE
    # Its layers are top-level layers of the PCL backbone (no nesting).
    layers = {layer.name: layer for layer in backbone.layers}
    assert layers["conv1_conv"] is backbone.hub_backbone.get_layer("conv1_conv")
    assert not any(isinstance(layer, keras.Model) for layer in backbone.layers)
    # Where the last stack (the last pyramid level, P4) begins.
    assert backbone.default_split_at == "stack1_block0_out"
    assert keras_pcl.backbones.recommended_split(backbone) == "stack1_block0_out"
    candidates = keras_pcl.backbones.split_candidates(backbone)
    assert {"pool1_pool", "stack0_block0_out", "stack1_block0_out"} <= set(candidates)
    assert "stack2_block0_1_conv" not in candidates  # inside a residual block
    x = images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(x, training=False)),
        pooled(hub, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_max_pooling_and_names():
    backbone = from_keras_hub(small_resnet(), pooling="max", image_shape=SHAPE)
    assert backbone.layers[-1].name == "max_pool"
    assert isinstance(backbone.layers[-1], keras.layers.GlobalMaxPooling2D)
    named = from_keras_hub(small_resnet(), image_shape=SHAPE, name="hub_resnet")
    assert named.name == "hub_resnet"


@pytest.mark.slow_on_jax
@pytest.mark.parametrize(
    "family, split",
    [
        (
            lambda: keras_hub.models.DenseNetBackbone(
                stackwise_num_repeats=[1, 1, 1], growth_rate=4
            ),
            "transition2_pool",
        ),
        (
            lambda: keras_hub.models.VGGBackbone(
                stackwise_num_repeats=[1, 1, 1], stackwise_num_filters=[4, 8, 8]
            ),
            "block2_pool",
        ),
        (
            lambda: keras_hub.models.EfficientNetBackbone(
                stackwise_kernel_sizes=[3, 3, 3],
                stackwise_num_repeats=[1, 1, 1],
                stackwise_input_filters=[8, 8, 16],
                stackwise_output_filters=[8, 16, 16],
                stackwise_expansion_ratios=[1, 4, 4],
                stackwise_squeeze_and_excite_ratios=[0.0, 0.25, 0.25],
                stackwise_strides=[1, 2, 2],
                stackwise_block_types=["fused", "unfused", "unfused"],
                width_coefficient=1.0,
                depth_coefficient=1.0,
            ),
            # Before the last strided block: its second-to-last pyramid level.
            "block2a_",
        ),
    ],
    ids=["densenet", "vgg", "efficientnet"],
)
def test_other_families_split_where_their_last_stage_begins(family, split):
    backbone = from_keras_hub(family(), image_shape=SHAPE)
    assert backbone.default_split_at == split
    assert split in keras_pcl.backbones.split_candidates(backbone)
    trunk, head = keras_pcl.splitting.split_backbone(backbone, split)
    assert len(head.output.shape) == 2


def test_config_round_trip_keeps_the_hub_config_and_the_split():
    backbone = from_keras_hub(
        small_resnet(), image_shape=SHAPE, kernel_regularizer=keras.regularizers.L2(1.0)
    )
    config = backbone.get_config()
    assert config["backbone"]["class_name"] == "ResNetBackbone"
    assert config["backbone"]["module"].startswith("keras_hub")
    config = json.loads(json.dumps(config))  # tuples become lists
    clone = KerasHubBackbone.from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    assert clone.default_split_at == backbone.default_split_at
    assert clone.kernel_regularizer.get_config() == {"l2": 1.0}
    clone.set_weights(backbone.get_weights())
    x = images()
    np.testing.assert_allclose(
        clone.predict(x, verbose=0), backbone.predict(x, verbose=0), atol=1e-6
    )


def test_kernel_regularizer_reaches_every_kernel_and_every_peer():
    regularizer = keras.regularizers.L2(1e-4)
    hub = small_resnet()
    backbone = from_keras_hub(hub, image_shape=SHAPE, kernel_regularizer=regularizer)
    assert hub.get_layer("conv1_conv").kernel.regularizer is None  # a copy
    convs = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)
    ]
    assert len(backbone.losses) == len(convs) == 9  # stem 1, stacks 2 + 3 + 3
    model = keras_pcl.PeerCollaborativeModel(backbone, num_classes=3, num_peers=2)
    head_convs = [
        layer
        for layer in model.peer_heads[1].layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    assert head_convs
    assert all(layer.kernel.regularizer is not None for layer in head_convs)


# ----------------------------------------------------------------------
# In PeerCollaborativeModel: train, deploy, save, export
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    backbone = from_keras_hub(small_resnet(), image_shape=SHAPE)
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=3, num_peers=2, rampup_steps=1
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x = images()
    y = np.array([0, 1, 2, 0], dtype="int32")
    before = [w.copy() for w in model.trunk.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return model, x, before, history


def test_one_pcl_step_trains_the_hub_layers(trained):
    model, _, before, history = trained
    assert model.split_at == "stack1_block0_out"
    assert np.isfinite(history.history["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == 1
    after = model.trunk.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_deployed_peer_is_a_plain_network_with_the_models_logits(trained):
    model, x, _, _ = trained
    peer = model.get_peer(0)
    assert type(peer) is keras.Model or type(peer).__name__ == "Functional"
    # Plain Keras layers: serving it needs no KerasHub class.
    config = json.dumps(keras.saving.serialize_keras_object(peer))
    assert "keras_hub" not in config
    np.testing.assert_allclose(
        peer.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_keras_file_round_trip_of_the_pcl_model(trained, tmp_path):
    model, x, _, _ = trained
    path = os.path.join(tmp_path, "pcl_hub.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(model)
    assert reloaded.split_at == model.split_at
    backbone = keras.saving.deserialize_keras_object(reloaded.get_config()["backbone"])
    assert isinstance(backbone, KerasHubBackbone)
    assert isinstance(backbone.hub_backbone, keras_hub.models.ResNetBackbone)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_export_peer_keras_reloads(trained, tmp_path):
    model, x, _, _ = trained
    path = os.path.join(tmp_path, "peer.keras")
    model.export_peer(path, peer=0, format="keras")
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


# ----------------------------------------------------------------------
# Presets (a local directory: no downloads)
# ----------------------------------------------------------------------


def test_local_preset_directory_loads_the_same_backbone(tmp_path):
    hub = small_resnet()
    preset = os.path.join(tmp_path, "small_resnet")
    hub.save_to_preset(preset)
    expected = from_keras_hub(hub, image_shape=SHAPE)
    from_dir = from_keras_hub(preset, image_shape=SHAPE)
    from_class = from_keras_hub(
        keras_hub.models.ResNetBackbone.from_preset(preset, image_shape=SHAPE)
    )
    x = images()
    for backbone in (from_dir, from_class):
        assert backbone.default_split_at == expected.default_split_at
        assert keras_pcl.backbones.split_candidates(
            backbone
        ) == keras_pcl.backbones.split_candidates(expected)
        np.testing.assert_allclose(
            backbone.predict(x, verbose=0), expected.predict(x, verbose=0), atol=1e-6
        )
    model = keras_pcl.PeerCollaborativeModel(from_dir, num_classes=3, num_peers=2)
    assert model.predict(x, verbose=0).shape == (4, 3)


def test_preprocessing_from_a_converter_or_its_preset(tmp_path):
    scale = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
    offset = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    converter = keras_hub.layers.ResNetImageConverter(scale=scale, offset=offset)
    # A preset directory holds the backbone and its converter, as a task's
    # `save_to_preset` writes them.
    preset = os.path.join(tmp_path, "preset")
    small_resnet().save_to_preset(preset)
    converter.save_to_preset(preset)
    x = images()
    expected = keras.ops.convert_to_numpy(converter(x))
    for source in (converter, preset):
        layer = preprocessing_from_keras_hub(source)
        assert isinstance(layer, keras.layers.Rescaling)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
        )
    # A plain layer: it saves inside the PCL model's config.
    layer = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------
# What is refused, and the fix
# ----------------------------------------------------------------------


def test_refuses_a_task_and_names_its_backbone():
    hub = small_resnet()
    task = keras_hub.models.ResNetImageClassifier(backbone=hub, num_classes=3)
    with pytest.raises(ValueError, match=r"task\.backbone.*Received: backbone="):
        from_keras_hub(task)


def test_refuses_a_model_that_is_not_a_keras_hub_backbone():
    plain = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="PeerCollaborativeModel` directly"):
        from_keras_hub(plain)


def test_refuses_an_open_image_shape_and_bad_shapes():
    with pytest.raises(ValueError, match=r"image_shape=\(32, 32, 3\).*Received"):
        from_keras_hub(small_resnet())
    with pytest.raises(ValueError, match="3 positive ints"):
        from_keras_hub(small_resnet(), image_shape=(16, 16))


def test_refuses_an_unknown_pooling_with_a_close_match():
    with pytest.raises(ValueError, match=r"Did you mean 'avg'.*Received: pooling="):
        from_keras_hub(small_resnet(), pooling="average", image_shape=SHAPE)
    with pytest.raises(ValueError, match="Received: pooling=None"):
        from_keras_hub(small_resnet(), pooling=None, image_shape=SHAPE)


def test_refuses_preset_arguments_with_an_instance():
    with pytest.raises(ValueError, match=r"from_preset.*Received: load_weights"):
        from_keras_hub(small_resnet(), image_shape=SHAPE, load_weights=False)


@pytest.mark.slow_on_jax
def test_refuses_vit_whose_layers_do_not_rebuild_from_their_config():
    # keras-hub 0.32: ViTPatchingAndEmbedding's config has keys that its
    # constructor refuses, and PCL copies every layer from its config.
    with pytest.raises(ValueError, match="vit_patching_and_embedding.*from_config"):
        from_keras_hub(small_vit(), image_shape=SHAPE)
    # Its position embedding depends on the input size: no rebuild.
    with pytest.raises(ValueError, match="position embedding"):
        from_keras_hub(small_vit(), image_shape=(8, 8, 3))


@pytest.mark.slow_on_jax
def test_refuses_a_hub_config_that_rebuilds_another_network():
    # keras-hub 0.32: EfficientNetBackbone.get_config leaves out
    # `num_features`, so its config rebuilds a 1280-feature head.
    hub = keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3],
        stackwise_num_repeats=[1],
        stackwise_input_filters=[8],
        stackwise_output_filters=[8],
        stackwise_expansion_ratios=[1],
        stackwise_squeeze_and_excite_ratios=[0.0],
        stackwise_strides=[2],
        stackwise_block_types=["fused"],
        width_coefficient=1.0,
        depth_coefficient=1.0,
        num_features=16,
    )
    if "num_features" in hub.get_config():
        pytest.skip("this keras-hub's EfficientNet config keeps num_features")
    with pytest.raises(ValueError, match="num_features.*would not reload.*Received"):
        from_keras_hub(hub, image_shape=SHAPE)


def test_refuses_a_regularizer_that_peers_would_lose():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="block")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, inner(inputs))
    with pytest.raises(ValueError, match="'block'.*weight_decay.*Received"):
        pcl_hub._set_kernel_regularizer(model, keras.regularizers.L2(1e-4))


def test_preprocessing_refuses_what_is_not_a_converter():
    with pytest.raises(ValueError, match=r"image_converter.*Received: converter="):
        preprocessing_from_keras_hub(keras.layers.Rescaling(1.0))
    identity = keras_hub.layers.ImageConverter()
    with pytest.raises(ValueError, match="Identity"):
        preprocessing_from_keras_hub(identity)


def test_without_keras_hub_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(ImportError, match="pip install keras-hub"):
        from_keras_hub("any_preset")
