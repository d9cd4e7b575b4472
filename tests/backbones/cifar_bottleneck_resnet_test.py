"""The paper's bottleneck CIFAR ResNet-110 (spec section 6)."""

import keras
import numpy as np
import pytest

from keras_pcl.backbones import CIFARBottleneckResNet
from keras_pcl.backbones import resnet110


def expected_parameters(depth, width_factor=1, num_classes=None):
    """Layer by layer: bias-free convs, BN with 4 numbers per channel
    (gamma, beta, moving mean and variance), 1x1 projection shortcuts where
    the shape changes, optional dense classifier on 256 features."""
    n = (depth - 2) // 9
    count = 3 * 3 * 3 * 16 + 4 * 16  # stem
    channels = 16
    for planes in (16, 32, 64):
        inner, out = planes * width_factor, planes * 4
        for block in range(n):
            count += channels * inner + 4 * inner  # 1x1 reduce
            count += 9 * inner * inner + 4 * inner  # 3x3
            count += inner * out + 4 * out  # 1x1 expand
            if channels != out or (block == 0 and planes != 16):
                count += channels * out + 4 * out  # projection shortcut
            channels = out
    if num_classes:
        count += 256 * num_classes + num_classes
    return count


@pytest.mark.slow_on_jax
def test_resnet110_parameter_count():
    model = resnet110()
    assert model.count_params() == expected_parameters(110)
    assert model.name == "cifar_bottleneck_resnet110"


@pytest.mark.slow_on_jax
def test_structure_and_default_split():
    model = resnet110()
    assert model.output.shape == (None, 256)
    assert model.default_split_at == "stage2_block12_out"
    assert model.get_layer("stage2_block12_out").output.shape == (None, 16, 16, 128)
    assert model.get_layer("stage3_block12_out").output.shape == (None, 8, 8, 256)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    # 1 stem + 3 per block * 36 blocks + 3 projection shortcuts = 110 - 1 + 3.
    assert len(convs) == 1 + 3 * 36 + 3
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 32}, "depth=32"),
        ({"depth": True}, "depth=True"),
        ({"width_factor": 0}, "width_factor=0"),
        ({"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ({"input_shape": (2, 2, 3)}, r"input_shape=\(2, 2, 3\)"),
        ({"data_format": "NHWC"}, "data_format='NHWC'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFARBottleneckResNet(**kwargs)


def test_config_round_trip_keeps_the_regularizer():
    model = CIFARBottleneckResNet(
        depth=11,
        width_factor=2,
        input_shape=(8, 8, 3),
        kernel_regularizer=keras.regularizers.L2(2.5e-4),
    )
    clone = CIFARBottleneckResNet.from_config(model.get_config())
    assert clone.count_params() == model.count_params() == expected_parameters(11, 2)
    assert clone.name == "cifar_bottleneck_resnet11_x2"
    conv = clone.get_layer("stage1_block1_conv1")
    np.testing.assert_allclose(conv.kernel_regularizer.l2, 2.5e-4)
