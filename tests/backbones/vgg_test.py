"""CIFAR VGG-16 with batch norm and the 512-512 MLP (spec section 6)."""

import keras
import pytest

from keras_pcl.backbones import VGG16BN
from keras_pcl.backbones import vgg16

WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def expected_parameters(num_classes=None):
    """Layer by layer: 3x3 convs with bias, BN with 4 numbers per channel,
    two 512-unit dense layers, optional classifier on 512 features."""
    count, channels = 0, 3
    for width in WIDTHS:
        count += 9 * channels * width + width + 4 * width
        channels = width
    count += 2 * (512 * 512 + 512)
    if num_classes:
        count += 512 * num_classes + num_classes
    return count


@pytest.mark.slow_on_jax
def test_parameter_count():
    model = vgg16()
    assert model.count_params() == expected_parameters()


@pytest.mark.slow_on_jax
def test_convolutions_match_keras_applications_vgg16():
    # An independent definition of the same 13 convolutions: Keras' own
    # VGG16 conv base (no BN, no MLP).
    reference = keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    model = vgg16()
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert sum(l.count_params() for l in convs) == reference.count_params()
    assert [l.filters for l in convs] == WIDTHS


@pytest.mark.slow_on_jax
def test_structure_and_default_split():
    model = vgg16()
    assert model.name == "vgg16_bn"
    assert model.output.shape == (None, 512)
    assert model.default_split_at == "block4_pool"
    assert model.get_layer("block4_pool").output.shape == (None, 2, 2, 512)
    # The MLP ends the backbone: the peers own it, PCL adds the classifier.
    assert [l.name for l in model.layers[-4:]] == [
        "mlp_dense1",
        "mlp_relu1",
        "mlp_dense2",
        "mlp_relu2",
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (16, 16, 3)}, r"input_shape=\(16, 16, 3\)"),
        ({"data_format": "nchw"}, "data_format='nchw'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VGG16BN(**kwargs)


@pytest.mark.slow_on_jax
def test_config_round_trip():
    model = VGG16BN(kernel_regularizer=keras.regularizers.L2(1e-4), name="v")
    clone = VGG16BN.from_config(model.get_config())
    assert clone.name == "v" and clone.count_params() == model.count_params()
    assert clone.get_layer("mlp_dense2").kernel_regularizer.l2 == pytest.approx(1e-4)
