"""ImageNet ResNet-18 (torchvision's definition)."""

import keras
import pytest

from keras_pcl.backbones import ImageNetResNet
from keras_pcl.backbones import resnet18

# torchvision.models.resnet18(num_classes=1000): 11,689,512 parameters
# (resnet34: 21,797,672). Keras also counts BN moving mean and variance:
# 2 per BN channel; ResNet-18 has 4,800 BN channels, ResNet-34 8,512.
PUBLISHED = {18: 11_689_512, 34: 21_797_672}
BN_CHANNELS = {18: 64 + 4 * 64 + (4 * 128 + 128) + (4 * 256 + 256) + (4 * 512 + 512)}
BN_CHANNELS[34] = 64 + 6 * 64 + (8 * 128 + 128) + (12 * 256 + 256) + (6 * 512 + 512)


def with_classifier(model, num_classes=1000):
    inputs = keras.Input(model.input.shape[1:])
    return keras.Model(inputs, keras.layers.Dense(num_classes)(model(inputs)))


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.slow_on_jax
def test_parameter_count_matches_torchvision(depth):
    model = with_classifier(ImageNetResNet(depth=depth))
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    assert trainable == PUBLISHED[depth]
    assert model.count_params() == PUBLISHED[depth] + 2 * BN_CHANNELS[depth]


@pytest.mark.slow_on_jax
def test_shapes_and_default_split():
    model = resnet18()
    assert model.input.shape == (None, 224, 224, 3)
    assert model.get_layer("stem_pool").output.shape == (None, 56, 56, 64)
    assert model.default_split_at == "stage3_block2_out"
    assert model.get_layer("stage3_block2_out").output.shape == (None, 14, 14, 256)
    assert model.get_layer("stage4_block2_out").output.shape == (None, 7, 7, 512)
    assert model.output.shape == (None, 512)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 50}, r"one of \[18, 34\]\. Received: depth=50"),
        ({"depth": True}, "depth=True"),
        ({"input_shape": (16, 16, 3)}, r"input_shape=\(16, 16, 3\)"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageNetResNet(**kwargs)


@pytest.mark.slow_on_jax
def test_config_round_trip():
    model = resnet18(input_shape=(32, 32, 3))
    clone = ImageNetResNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
