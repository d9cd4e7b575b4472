"""`keras-pcl compare` / `keras_pcl.training.equal_cost`: equal-cost comparison."""

import json

import pytest

from keras_pcl import cli
from keras_pcl.training import TrainConfig
from keras_pcl.training import equal_cost
from tests.data.images import make_folder


@pytest.mark.backend_independent  # Pure Python: the same answer on every backend.
def test_the_plain_run_gets_the_ratio_times_the_epochs_and_schedule(tmp_path):
    config = TrainConfig(
        epochs=30, lr_decay_epochs=(15, 22.5), rampup_epochs=8, workdir=str(tmp_path)
    )
    plain = equal_cost.plain_config(config, 3.9)
    assert plain.method == "vanilla" and plain.epochs == 117  # round(30 x 3.9)
    assert plain.lr_decay_epochs == pytest.approx((58.5, 87.75))  # x 117/30
    assert plain.rampup_epochs == pytest.approx(8 * 117 / 30)
    assert plain.workdir == str(tmp_path / "vanilla")
    with pytest.raises(ValueError, match="ratio=0"):
        equal_cost.plain_config(config, 0)


@pytest.mark.backend_independent  # Checked before anything is built.
def test_bad_comparisons_raise_before_training(tmp_path):
    with pytest.raises(ValueError, match="method='vanilla'"):
        equal_cost.compare(TrainConfig(method="vanilla", workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="validation_split=0"):
        equal_cost.compare(
            TrainConfig(dataset="digits", validation_split=0.0, workdir=str(tmp_path))
        )
    (tmp_path / "compare.json").write_text(json.dumps({"ratio": 4.0}))
    with pytest.raises(ValueError, match="ratio=3.0"):  # Resuming other runs.
        equal_cost.compare(TrainConfig(workdir=str(tmp_path)), ratio=3.0)


# Thin over `keras_pcl.training.train`, which runs on every backend elsewhere.
@pytest.mark.backend_independent
def test_compare_on_a_tiny_image_folder(tmp_path, capsys):
    images = tmp_path / "images"
    make_folder(str(images), per_class=(12, 12, 12), size=8)
    workdir = tmp_path / "run"
    code = cli.main(
        [
            "compare",
            f"--dataset={images}",
            "--image_size=8,8",
            "--backbone=resnet8",
            "--num_peers=2",
            "--epochs=1",
            "--batch_size=8",
            "--validation_split=0.25",
            f"--workdir={workdir}",
            "--save_freq=0",
            "--export_format=keras",
            "--verbose=0",
            "--timing_steps=1",
        ]
    )
    assert code == cli.EXIT_OK, capsys.readouterr().err
    out = capsys.readouterr().out.strip().splitlines()
    # The command's own lines (process settings, speed-ups) come first.
    out = out[[line.startswith("Step cost:") for line in out].index(True) :]
    saved = json.loads((workdir / "compare.json").read_text())
    ratio, timing = saved["ratio"], saved["timing"]
    # The ratio of the two measured steps (its size is the machine's: tiny
    # 8x8 images on a loaded CPU may even time a PCL step below a plain one).
    assert ratio == timing["method_step_seconds"] / timing["vanilla_step_seconds"]
    assert out[0].startswith(f"Step cost: one pcl step = {ratio:.2f} plain steps")
    assert "measured on this machine" in out[0]
    plain = json.loads((workdir / "vanilla" / "config.json").read_text())
    assert plain["method"] == "vanilla" and plain["epochs"] == max(1, round(ratio))
    assert out[1].startswith("pcl: 1 epochs (3 steps")  # 27 training images / 8
    assert out[2].startswith(f"vanilla: {plain['epochs']} epochs")
    accuracies = [float(line.split()[-5].rstrip("%")) for line in out[1:3]]
    difference = accuracies[0] - accuracies[1]
    # The printed difference is of the unrounded accuracies; each printed
    # accuracy is rounded to 0.01, so the two differ by at most 0.01.
    assert out[3].endswith(" points")
    printed = float(out[3].split()[-2])
    assert abs(printed - difference) <= 0.01 + 1e-9
    assert ("pcl is better" in out[3]) == (difference > 0)
    assert (workdir / "pcl" / "export.keras").exists()
    assert (workdir / "vanilla" / "export.keras").exists()
