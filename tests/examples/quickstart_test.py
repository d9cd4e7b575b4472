"""The quickstart example runs end to end on a tiny generated image folder."""

import os
import re
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
        [sys.executable, SCRIPT] + args,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )


# The README's command uses the default backend.


@pytest.mark.backend_independent(on="tensorflow")
def test_quickstart_trains_compares_exports_and_reloads(tmp_path):
    """The README's first command, with a shorter schedule (digits, offline)."""
    workdir = tmp_path / "out"
    result = run(
        [
            "--epochs=1",
            "--steps_per_epoch=2",
            "--baseline_seconds=1",
            f"--workdir={workdir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in [
        "peer 0 (student)",
        "peer 2 (student)",
        "peer ensemble",
        "peer 0 mean teacher",
        "deployed: peer",
        "resnet8 alone, same epochs (1 epochs)",
        "resnet8 alone, 1 s",
    ]:
        assert row in out, row
    assert "reloaded, it predicts the same" in out
    # The default training subset of the digits; the validation split: 20%.
    header = re.search(r"on digits \((\d+) training images, 359 validation;", out)
    assert header and 10 <= int(header.group(1)) < 1438, out[-2000:]
    percentages = [
        float(line.split()[-1].rstrip("%"))
        for line in out.splitlines()
        if line.strip().endswith("%")
    ]
    assert len(percentages) == 10 and all(0 <= p <= 100 for p in percentages)
    exported = workdir / (
        "deployed.keras" if keras.backend.backend() == "torch" else "deployed"
    )
    assert exported.exists()
