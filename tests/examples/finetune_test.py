"""`examples/finetune.py` fine-tunes a "pretrained" MobileNetV2 end to end.

The "pretrained" weights are a saved random initialisation (no network
here): what matters is that every peer starts from exactly those weights.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_pcl import training
from tests.examples.quickstart_test import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "finetune.py")
SHAPE = (32, 32, 3)  # MobileNetV2's smallest input.


def pretrained_mobilenet(path):
    """A small MobileNetV2 (`alpha=0.35`) whose weights are saved at `path`."""
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=SHAPE, alpha=0.35
    )
    backbone.save_weights(path)
    return backbone


def kernel(layer):
    return keras.ops.convert_to_numpy(layer.kernel)


# A thin wrapper of `train`, which runs on every backend.


@pytest.mark.backend_independent
def test_finetune_starts_every_peer_from_the_weights_then_trains_and_exports(
    tmp_path,
):
    weights = str(tmp_path / "mobilenet_v2.weights.h5")
    pretrained = pretrained_mobilenet(weights)
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=6, size=32)
    config = training.finetune_config(
        dataset=data,
        image_size=SHAPE[:2],
        backbone_alpha=0.35,
        backbone_weights=weights,
        num_peers=2,
    )

    # The model the example builds, before any training step.
    config.validate()
    backbone = training.build_backbone(config, SHAPE)
    model = training.build_model(
        config,
        SHAPE,
        3,
        1,
        preprocessing=training.model_preprocessing(config, backbone, None),
        backbone=backbone,
    )
    assert model.split_at == "block_12_add"  # `recommended_split`
    np.testing.assert_array_equal(
        kernel(model.trunk.get_layer("Conv1")), kernel(pretrained.get_layer("Conv1"))
    )
    expected = kernel(pretrained.get_layer("block_13_expand"))  # In the head.
    for j in range(2):
        for head in (model.peer_heads[j], model.mean_teacher_heads[j]):
            layer = head.get_layer(f"{head.name}_block_13_expand")
            np.testing.assert_array_equal(kernel(layer), expected)
    # MobileNetV2's own `preprocess_input`, [0, 255] -> [-1, 1], in the model.
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.preprocessing(pixels)),
        [[[[-1.0, 0.0, 1.0]]]],
        atol=1e-6,
    )

    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            f"--dataset={data}",
            "--image_size=32,32",
            "--backbone_alpha=0.35",
            f"--backbone_weights={weights}",
            "--num_peers=2",
            "--epochs=1",
            "--batch_size=4",
            "--steps_per_epoch=2",
            "--validation_split=0.34",
            f"--workdir={workdir}",
            "--save_freq=0",
            "--export_format=keras",
            "--verbose=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best peer: BestPeer(peer=" in result.stdout
    trained = keras.saving.load_model(workdir / "pcl.keras")
    assert trained.peer_initialization == "backbone"
    assert int(keras.ops.convert_to_numpy(trained.step_counter.value)) == 2
    student = trained.peer_heads[0].get_layer("peer_0_head_block_13_expand")
    assert not np.allclose(kernel(student), expected)  # It trained.
    exported = keras.saving.load_model(workdir / "export.keras")
    images = np.random.default_rng(0).uniform(0, 255, (2, *SHAPE)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(exported(images)),
        keras.ops.convert_to_numpy(trained.get_peer(trained.best_peer.peer)(images)),
        atol=1e-4,
    )
