"""keras.applications networks as backbones."""

import importlib

import keras
import numpy as np
import pytest

from keras_pcl import backbones
from keras_pcl.backbones import applications


@pytest.mark.parametrize(
    "name", ["MobileNetV2", "ResNet50", "DenseNet121", "VGG16", "Xception"]
)
def test_application_preprocessing_is_the_familys_preprocess_input(name):
    constructor = getattr(keras.applications, name)
    module = importlib.import_module(constructor.__module__)
    images = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    layer = applications.application_preprocessing(name)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(images)),
        keras.ops.convert_to_numpy(module.preprocess_input(images.copy())),
        atol=2e-4,
    )
    # A layer of the model: it reloads from its config (safe mode).
    config = keras.saving.serialize_keras_object(layer)
    assert type(keras.saving.deserialize_keras_object(config)) is type(layer)


def test_get_builds_an_application_without_its_top():
    backbone = backbones.get("MobileNetV2", input_shape=(32, 32, 3), alpha=0.35)
    assert backbones.is_application("MobileNetV2")
    assert not backbones.is_application("resnet8")  # A CIFAR ResNet depth.
    assert backbone.output.shape == (None, 1280)  # pooling="avg", no top.
    assert not any(isinstance(l, keras.layers.Dense) for l in backbone.layers)
