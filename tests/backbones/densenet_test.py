"""DenseNet-40-12, BC variant (spec section 6)."""

import keras
import pytest

from keras_pcl.backbones import CIFARDenseNet
from keras_pcl.backbones import densenet40_12


def expected_parameters(depth=40, growth=12, num_classes=None):
    """Layer by layer, DenseNet-BC: bias-free convs, BN with 4 numbers per
    channel; each dense layer BN-1x1 conv (4k)-BN-3x3 conv (k); transitions
    BN-1x1 conv halving the channels; final BN; optional classifier."""
    n = (depth - 4) // 6
    channels = 2 * growth
    count = 9 * 3 * channels  # stem
    for block in range(3):
        for _ in range(n):
            count += 4 * channels + channels * 4 * growth  # BN + 1x1
            count += 4 * 4 * growth + 9 * 4 * growth * growth  # BN + 3x3
            channels += growth
        if block < 2:
            out = channels // 2
            count += 4 * channels + channels * out
            channels = out
    count += 4 * channels  # final BN
    if num_classes:
        count += channels * num_classes + num_classes
    return count, channels


@pytest.mark.slow_on_jax
def test_parameter_count_and_features():
    model = densenet40_12()
    count, features = expected_parameters()
    assert model.count_params() == count
    assert features == 132 and model.output.shape == (None, 132)


@pytest.mark.slow_on_jax
def test_channels_and_default_split():
    model = densenet40_12()
    assert model.name == "densenet40_12"
    assert model.default_split_at == "transition2_pool"
    assert model.get_layer("block1_layer6_concat").output.shape[-1] == 96
    assert model.get_layer("transition1_pool").output.shape == (None, 16, 16, 48)
    assert model.get_layer("transition2_pool").output.shape == (None, 8, 8, 60)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    # Depth 40 = stem + 3 blocks * 6 layers * 2 convs + 2 transitions + the
    # classifier that PCL adds.
    assert len(convs) == 40 - 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 41}, "depth=41"),
        ({"growth_rate": 0}, "growth_rate=0"),
        ({"input_shape": (3, 32, 32)}, r"input_shape=\(3, 32, 32\)"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFARDenseNet(**kwargs)


def test_config_round_trip():
    model = CIFARDenseNet(depth=10, growth_rate=4, input_shape=(8, 8, 3))
    clone = CIFARDenseNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == expected_parameters(10, 4)[0]
