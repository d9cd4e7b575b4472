"""CIFAR ResNets (6n+2, basic blocks) as spec section 6 defines them."""

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.backbones import CIFARResNet


def expected_parameters(depth, num_classes=None):
    """Layer-by-layer count: 3x3 convs without bias, BN (4 per channel:
    gamma, beta, moving mean and variance), 1x1 projection shortcuts where
    the width or stride changes, optional dense classifier on 64 features."""
    n = (depth - 2) // 6
    count = 3 * 3 * 3 * 16 + 4 * 16  # stem
    width_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            count += 9 * width_in * width + 4 * width  # conv1 + bn1
            count += 9 * width * width + 4 * width  # conv2 + bn2
            if width_in != width:
                count += width_in * width + 4 * width  # projection shortcut
            width_in = width
    if num_classes:
        count += 64 * num_classes + num_classes
    return count


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_parameter_count(depth):
    assert CIFARResNet(depth=depth).count_params() == expected_parameters(depth)


def test_resnet32_trainable_parameters_match_the_published_size():
    # ~0.46M in He et al. (option A shortcuts); +2,560 trainable weights for
    # the two projection shortcuts used by ONE/OKDDip.
    model = CIFARResNet(depth=32)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert 0.46e6 < trainable < 0.475e6


def test_structure_and_default_split():
    model = CIFARResNet(depth=32)
    assert model.output.shape == (None, 64)
    assert model.default_split_at == "stage2_block5_out"
    assert model.get_layer("stage2_block5_out").output.shape == (None, 16, 16, 32)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 31 + 2  # 31 3x3 convs + 2 projection shortcuts


def test_deployed_network_is_backbone_plus_classifier():
    model = keras_pcl.PeerCollaborativeModel(CIFARResNet(depth=20), num_classes=10)
    peer = model.get_peer(0)
    assert peer.count_params() == expected_parameters(20, num_classes=10)
    # Trunk + 3 peers' stage 3 and classifiers + ensemble head, twice for
    # the mean teachers (which have no ensemble head).
    n = 3
    stage3 = 9 * 32 * 64 + 4 * 64 + 9 * 64 * 64 + 4 * 64 + 32 * 64 + 4 * 64
    stage3 += (n - 1) * 2 * (9 * 64 * 64 + 4 * 64)
    trunk = expected_parameters(20) - stage3
    peer_params = stage3 + 64 * 10 + 10
    ensemble = 3 * 64 * 10 + 10
    # Plus the model's scalar bookkeeping variables (step counter, ...).
    scalars = sum(1 for w in model.weights if len(w.shape) == 0)
    assert model.count_params() == (2 * (trunk + 3 * peer_params) + ensemble + scalars)


def test_bad_depth_raises():
    with pytest.raises(ValueError, match="depth=33"):
        CIFARResNet(depth=33)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": "32"}, "Received: depth='32'"),
        ({"input_shape": (32, 32)}, r"three positive ints.*input_shape=\(32, 32\)"),
        ({"input_shape": (2, 2, 3)}, r">= 4 .*input_shape=\(2, 2, 3\)"),
        ({"data_format": "NCHW"}, "'channels_last' or 'channels_first'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFARResNet(**kwargs)


def test_config_round_trip():
    model = CIFARResNet(depth=14, input_shape=(16, 16, 3), name="r14")
    clone = CIFARResNet.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert clone.name == "r14" and clone.input.shape == (None, 16, 16, 3)


def test_channels_first_matches_channels_last():
    last = CIFARResNet(depth=8, input_shape=(8, 8, 3), data_format="channels_last")
    first = CIFARResNet(depth=8, input_shape=(3, 8, 8), data_format="channels_first")
    assert first.count_params() == last.count_params()
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    if keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow's CPU convolutions support channels_last only")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)))),
        keras.ops.convert_to_numpy(last(x)),
        rtol=1e-4,
        atol=1e-5,
    )
