"""Selecting built-in backbones by name."""

import keras
import pytest

from keras_pcl import backbones


def test_get_passes_keyword_arguments():
    backbone = backbones.get(
        "resnet20",
        input_shape=(16, 16, 3),
        kernel_regularizer=keras.regularizers.L2(2.5e-4),
        name="r",
    )
    assert isinstance(backbone, backbones.CIFARResNet)
    assert backbone.depth == 20 and backbone.name == "r"
    assert backbone.input.shape == (None, 16, 16, 3)
    assert backbone.get_layer("stem_conv").kernel_regularizer.l2 == pytest.approx(
        2.5e-4
    )


def test_resnet110_is_the_bottleneck_network():
    backbone = backbones.get("resnet110", input_shape=(8, 8, 3))
    assert isinstance(backbone, backbones.CIFARBottleneckResNet)
    assert backbone.output.shape == (None, 256)


@pytest.mark.parametrize(
    "name, match",
    [
        ("resnet-32", r"Did you mean \['resnet32'.*Received: name='resnet-32'"),
        ("mobilenet", r"'densenet40_12', 'resnet18'\]\..*Received: name='mobilenet'"),
        (32, "Received: name=32"),
    ],
)
def test_unknown_name_lists_the_valid_ones(name, match):
    with pytest.raises(ValueError, match=match):
        backbones.get(name)
