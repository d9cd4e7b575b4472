"""`examples/train_cifar.py` runs end to end on a tiny image folder."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pcl  # noqa: F401 (registers the classes that load_model reads)
from tests.examples.quickstart_test import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar.py")


@pytest.mark.backend_independent
def test_train_cifar_smoke_on_an_image_folder(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=2, per_class=12, size=8)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            f"--dataset={data}",
            "--backbone=resnet8",
            "--num_peers=2",
            "--epochs=2",
            "--batch_size=4",
            "--steps_per_epoch=2",
            "--lr_decay_epochs=1",
            "--rampup_epochs=1",
            "--validation_split=0.25",
            f"--workdir={workdir}",
            "--save_freq=1",
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
    for name in (
        "config.json",
        "pcl.keras",
        "best_peer.keras",
        "export.keras",
        "logs",
        "backup",
    ):
        assert (workdir / name).exists(), name
    model = keras.saving.load_model(workdir / "pcl.keras")
    assert int(keras.ops.convert_to_numpy(model.step_counter.value)) == 4
    exported = keras.saving.load_model(workdir / "export.keras")
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(exported(images)),
        keras.ops.convert_to_numpy(model.get_peer(model.best_peer.peer)(images)),
        atol=1e-5,
    )
