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
        ("mobilenet", r"Did you mean \['MobileNet', .*Received: name='mobilenet'"),
        ("VGG-16", r"Did you mean \['VGG16'.*Received: name='VGG-16'"),
        ("resnet9", r"D = 6n \+ 2.*Received: name='resnet9'"),
        (32, "Received: name=32"),
    ],
)
def test_unknown_name_lists_the_valid_ones(name, match):
    with pytest.raises(ValueError, match=match):
        backbones.get(name)


def test_resnet_of_any_6n_plus_2_depth_is_a_cifar_resnet():
    backbone = backbones.get("resnet8", input_shape=(8, 8, 3))
    assert isinstance(backbone, backbones.CIFARResNet) and backbone.depth == 8
    assert "resnet8" not in backbones.names()  # Not one of the paper's networks.


def test_training_resolves_names_through_the_registry():
    from keras_pcl import training

    assert training.build_backbone_fn("resnet20") is backbones.builder("resnet20")
    with pytest.raises(ValueError, match=r"`backbone` must be .*backbone='resnet-8'"):
        training.build_backbone_fn("resnet-8")
