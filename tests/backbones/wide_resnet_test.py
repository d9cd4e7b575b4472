"""WRN-20-8: wide bottleneck blocks 2/2/2 (spec section 6)."""

import keras
import pytest

from keras_pcl.backbones import WideResNet
from keras_pcl.backbones import wrn20_8
from tests.backbones.cifar_bottleneck_resnet_test import expected_parameters


@pytest.mark.slow_on_jax
def test_parameter_count():
    assert wrn20_8().count_params() == expected_parameters(20, width_factor=8)


@pytest.mark.slow_on_jax
def test_inner_width_is_eight_times_the_usual():
    model = wrn20_8()
    assert model.name == "wrn20_8"
    assert model.output.shape == (None, 256)
    assert model.default_split_at == "stage2_block2_out"
    for stage, planes in zip((1, 2, 3), (16, 32, 64)):
        assert model.get_layer(f"stage{stage}_block1_conv1").filters == 8 * planes
        assert model.get_layer(f"stage{stage}_block1_conv2").filters == 8 * planes
        assert model.get_layer(f"stage{stage}_block1_conv3").filters == 4 * planes


def test_config_round_trip():
    model = WideResNet(depth=11, width_factor=2, input_shape=(8, 8, 3))
    config = model.get_config()
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model)
    )
    assert isinstance(clone, WideResNet)
    assert clone.get_config() == config
    assert clone.name == "wrn11_2"
