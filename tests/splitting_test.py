"""Cutting backbones into trunk and peer head."""

import keras
import numpy as np
import pytest

from keras_pcl.backbones import CIFARResNet
from keras_pcl.splitting import fresh_clone
from keras_pcl.splitting import split_backbone
from keras_pcl.splitting import split_candidates
from tests.testing import tiny_backbone


def test_trunk_then_head_is_the_backbone():
    backbone = tiny_backbone()
    trunk, head = split_backbone(backbone, "split")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(trunk(x))),
        keras.ops.convert_to_numpy(backbone(x)),
        rtol=1e-6,
    )
    assert trunk.count_params() + head.count_params() == backbone.count_params()


def test_candidates_are_the_single_tensor_cuts():
    backbone = CIFARResNet(depth=8)
    candidates = split_candidates(backbone)
    # Block outputs (before and after their ReLU) and the stem: nothing
    # inside a residual block, where the shortcut crosses.
    assert candidates == [
        "stem_conv", "stem_bn", "stem_relu",
        "stage1_block1_add", "stage1_block1_out",
        "stage2_block1_add", "stage2_block1_out",
        "stage3_block1_add", "stage3_block1_out",
    ]


def test_split_across_a_residual_connection_is_refused():
    backbone = CIFARResNet(depth=8)
    with pytest.raises(ValueError, match="does not cut the backbone in one tensor"):
        split_backbone(backbone, "stage3_block1_conv1")


def test_unknown_layer_lists_close_names():
    with pytest.raises(ValueError, match=r"Close matches: \['stage2_block1_out'"):
        split_backbone(CIFARResNet(depth=8), "stage2_block1_ou")


def test_sequential_backbone():
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(4, 3, name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
        ]
    )
    trunk, head = split_backbone(backbone, "relu1")
    assert trunk.output.shape == (None, 6, 6, 4)
    assert head.output.shape == (None, 4)


def test_fresh_clone_reinitialises_seeded_layers_and_prefixes_names():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotNormal(seed=1), name="d"
    )(inputs)
    model = keras.Model(inputs, outputs)
    a, b = fresh_clone(model, "a"), fresh_clone(model, "b")
    assert [l.name for l in a.layers][1:] == ["a_d"]
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])
