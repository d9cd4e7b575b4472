"""The quickstart example runs end to end on a tiny generated image folder."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "quickstart.py")


def write_image_folder(root, classes=2, per_class=12, size=32):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c}"))
        for i in range(per_class):
            image = rng.integers(0, 120, size=(size, size, 3)).astype("uint8")
            image[..., c] += 120  # learnable: the dominant channel
            png = tf.io.encode_png(image).numpy()
            with open(os.path.join(root, f"class_{c}", f"{i:03d}.png"), "wb") as f:
                f.write(png)


def run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, SCRIPT] + args, capture_output=True, text=True,
        env=env, timeout=600, cwd=ROOT,
    )


def test_quickstart_trains_reports_and_saves_the_deployed_peer(tmp_path):
    data = os.path.join(tmp_path, "images")
    write_image_folder(data)
    output = os.path.join(tmp_path, "deployed.keras")
    result = run([
        f"--data_dir={data}", "--num_train=16", "--num_val=8", "--epochs=1",
        "--batch_size=8", "--depth=8", f"--output={output}",
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ["peer 0", "peer 2", "ensemble", "Deployed: mean teacher of peer"]:
        assert row in result.stdout
    deployed = keras.models.load_model(output)
    logits = deployed.predict(np.zeros((2, 32, 32, 3), "uint8"), verbose=0)
    assert logits.shape == (2, 2) and np.isfinite(logits).all()


def test_quickstart_rejects_a_missing_folder(tmp_path):
    result = run([f"--data_dir={tmp_path}/nowhere"])
    assert result.returncode != 0
    assert "is not a directory" in result.stderr
