"""`keras_pcl.training` before the first step: the schedule of the run, the
data summary, and the checks of the data and the split.

The schedule defaults to fractions of the run (issue #28, item 1); the
paper's recipe must still give the paper's numbers exactly.
"""

import dataclasses
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_pcl import cli
from keras_pcl import losses
from keras_pcl import mean_teacher
from keras_pcl import training
from keras_pcl.data.pipeline import DataSplits
from keras_pcl.training import config as config_module
from keras_pcl.training import job
from keras_pcl.views import PixelScaleWarning
from tests.examples.quickstart_test import write_image_folder


def caught_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------
# The schedule: fractions of the run, the paper's numbers at full length.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps_per_epoch", [391, 351])  # 50,000 or 45,000 / 128
def test_the_paper_recipe_gives_the_papers_schedule_exactly(steps_per_epoch):
    spe = steps_per_epoch
    schedule = config_module.run_schedule(training.cifar_config(), spe)
    # What the absolute defaults (80, (150, 225), 0.999) gave before.
    assert schedule.rampup_steps == int(round(80.0 * spe))
    assert schedule.lr_boundaries == (int(150 * spe), int(225 * spe))
    assert schedule.ema_decay == 0.999
    assert schedule.rampup_epochs == 80.0
    assert schedule.lr_decay_epochs == (150.0, 225.0)
    assert schedule.warnings == {}


def test_the_other_recipes_keep_their_numbers_at_full_length():
    imagenet = config_module.run_schedule(training.imagenet_config(), 5005)
    assert imagenet.rampup_steps == 20 * 5005
    assert imagenet.lr_boundaries == (30 * 5005, 60 * 5005)
    assert imagenet.ema_decay == 0.999
    finetune = config_module.run_schedule(training.finetune_config(), 100)
    assert (finetune.rampup_epochs, finetune.lr_decay_epochs) == (5.0, (20.0, 25.0))
    assert finetune.lr_boundaries == (2000, 2500)


def test_a_short_run_gets_a_proportionally_short_schedule():
    schedule = config_module.run_schedule(training.cifar_config(epochs=30), 351)
    assert schedule.rampup_epochs == 8.0  # 80 / 300 of 30 epochs
    assert schedule.lr_decay_epochs == (15.0, 22.5)
    assert schedule.lr_boundaries == (15 * 351, int(22.5 * 351))
    assert schedule.warnings == {}
    two_epochs = config_module.run_schedule(training.cifar_config(epochs=2), 10)
    assert two_epochs.rampup_steps == round(80 / 300 * 20)
    # 20 steps: the mean teacher averages over a tenth of them.
    assert two_epochs.ema_decay == pytest.approx(1 - 1 / 2)


def test_the_ema_decay_averages_over_at_most_a_tenth_of_the_run():
    assert mean_teacher.ema_decay_for_run(300 * 391) == 0.999  # the paper's
    assert mean_teacher.ema_decay_for_run(10_000) == 0.999  # 1,000 = a tenth
    for total in (50, 999, 9_999):
        decay = mean_teacher.ema_decay_for_run(total)
        assert decay < 0.999
        assert mean_teacher.ema_horizon(decay) == pytest.approx(total / 10)
        assert mean_teacher.ema_decay_warning(decay, total) is None
    assert mean_teacher.ema_decay_for_run(5) == 0.0  # follows its student
    assert "ema_decay=0.999" in mean_teacher.ema_decay_warning(0.999, 9_999)


def test_explicit_lengths_that_exceed_the_run_warn_naming_them():
    config = training.cifar_config(
        epochs=30,
        backbone="resnet8",
        rampup_epochs=80.0,
        lr_decay_epochs=(150.0, 225.0),
        ema_decay=0.999,
    )
    model, messages = caught_warnings(job.build_model, config, (8, 8, 3), 3, 10)
    assert model.rampup_steps == 800 and model.ema_decay == 0.999  # as given
    assert any("`rampup_epochs=80` is longer than the run" in m for m in messages)
    assert any("`ema_decay=0.999` averages" in m for m in messages)
    _, messages = caught_warnings(job.compile_model, model, config, 10)
    assert any("`lr_decay_epochs=150,225`" in m for m in messages)
    boundaries = model.optimizer._learning_rate.boundaries
    assert [int(keras.ops.convert_to_numpy(b)) for b in boundaries] == [1500, 2250]


def test_explicit_lengths_that_fit_the_run_do_not_warn():
    config = training.cifar_config(
        epochs=30, backbone="resnet8", rampup_epochs=10.0, lr_decay_epochs=(20.0,)
    )
    model, messages = caught_warnings(job.build_model, config, (8, 8, 3), 3, 100)
    _, more = caught_warnings(job.compile_model, model, config, 100)
    schedule_words = ("rampup_epochs", "lr_decay_epochs", "ema_decay")
    assert not [m for m in messages + more if any(w in m for w in schedule_words)]
    assert model.rampup_steps == 1000


def test_a_method_without_a_ramp_up_is_not_warned_about_one():
    config = training.cifar_config(
        method="dml", epochs=2, backbone="resnet8", rampup_epochs=80.0
    )
    _, messages = caught_warnings(job.build_model, config, (8, 8, 3), 3, 10)
    assert not [m for m in messages if "rampup_epochs" in m]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rampup_fraction", 1.5, r"`rampup_fraction` must be a fraction"),
        ("rampup_epochs", -1.0, r"`rampup_epochs` must be a number >= 0"),
        ("lr_decay_fractions", (0.5, 1.0), r"`lr_decay_fractions` must be"),
        ("lr_decay_epochs", (-1.0,), r"`lr_decay_epochs` must be a tuple"),
        ("ema_decay", 1.0, r"`ema_decay` must be a number in \[0, 1\)"),
    ],
)
def test_bad_schedule_fields_raise_clear_errors(field, value, message):
    config = training.TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


# ---------------------------------------------------------------------------
# `train` on a folder: the summary it prints, and a 30-epoch run that
# distils at full weight from about a quarter of the run on.
# ---------------------------------------------------------------------------


def test_keras_pcl_train_epochs_30_ramps_up_over_a_quarter_of_the_run():
    args = cli.build_parser().parse_args(["train", "--epochs=30"])
    fields = dataclasses.fields(training.TrainConfig)
    config = training.TrainConfig(**{f.name: getattr(args, f.name) for f in fields})
    config.validate()
    steps_per_epoch = 351  # CIFAR-10's 45,000 training images, batch 128
    schedule = config_module.run_schedule(config, steps_per_epoch)
    assert schedule.rampup_steps / schedule.total_steps == pytest.approx(80 / 300)
    full = float(
        losses.consistency_rampup(schedule.rampup_steps, schedule.rampup_steps)
    )
    assert full == 1.0
    assert schedule.lr_decay_epochs == (15.0, 22.5)  # both drops happen
    assert schedule.warnings == {}


# `train` itself runs on every backend in training_test.py.


@pytest.mark.backend_independent
def test_a_short_run_distils_at_full_weight_and_says_its_data_and_schedule(
    tmp_path, capsys
):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=6, size=8)
    config = training.TrainConfig(
        dataset=data,
        backbone="resnet8",
        num_peers=2,
        epochs=4,
        batch_size=4,
        steps_per_epoch=1,
        validation_split=0.25,
        workdir=str(tmp_path / "run"),
        save_freq=0,
        export_format="none",
        verbose=2,
    )
    result = training.train(config)
    weights = result["history"]["consistency_weight"]
    # One step per epoch: epoch e logs w(t) at step e. The ramp-up is 80 /
    # 300 of the 4 steps, rounded: 1; the weight is full from step 1 on.
    expected = [np.exp(-5.0), 1.0, 1.0, 1.0]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)  # float32 exp
    out = capsys.readouterr().out
    assert "Data: 3 classes (class_0 4, class_1 4, class_2 4 training" in out
    assert "12 training and 6 validation images" in out
    assert "Schedule: 4 epochs of 1 step; consistency ramp-up over 1.06667" in out
    assert "learning rate / 10 at epochs 2, 3; mean-teacher decay 0." in out


# ---------------------------------------------------------------------------
# The data and the split are checked before training (and the split before
# any data is read).
# ---------------------------------------------------------------------------


def fake_splits(images, labels, class_names=("a", "b", "c")):
    train = tf.data.Dataset.from_tensor_slices((images, labels))
    return DataSplits(train, None, tuple(class_names), len(labels), 0)


def test_labels_out_of_range_in_the_pipeline_raise_before_training(monkeypatch):
    images = np.zeros((8, 8, 8, 3), "uint8")
    labels = np.array([0, 1, 2, 0, 1, 3, 2, 0], "int32")
    monkeypatch.setattr(job, "load_data", lambda config: fake_splits(images, labels))
    config = training.TrainConfig(dataset="digits", batch_size=4)
    with pytest.raises(ValueError, match=r"train split has labels outside \[0, 3\)"):
        job.prepare_data(config)


def test_steps_per_execution_must_divide_the_epoch(monkeypatch):
    images = np.zeros((12, 8, 8, 3), "uint8")
    labels = np.array([0, 1, 2] * 4, "int32")
    monkeypatch.setattr(job, "load_data", lambda config: fake_splits(images, labels))
    # 12 images of batch 2: 6 steps per epoch. 4 does not divide them.
    config = training.TrainConfig(dataset="digits", batch_size=2, steps_per_execution=4)
    with pytest.raises(ValueError, match=r"divide the 6 training steps.*\[3, 6\]"):
        job.prepare_data(config)
    for divisor in (1, 2, 3, 6):
        config = dataclasses.replace(config, steps_per_execution=divisor)
        assert job.prepare_data(config).steps_per_epoch == 6
    # A cap on the steps of an epoch counts: 4 steps, 4 per execution.
    config = dataclasses.replace(config, steps_per_execution=4, steps_per_epoch=4)
    assert job.prepare_data(config).steps_per_epoch == 4


def test_float_pixels_in_zero_one_in_the_pipeline_warn(monkeypatch):
    images = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 0], "int32")
    monkeypatch.setattr(job, "load_data", lambda config: fake_splits(images, labels))
    config = training.TrainConfig(dataset="digits", batch_size=4)
    with pytest.warns(PixelScaleWarning, match="the training images"):
        run = job.prepare_data(config)
    assert run.label_counts["train"].tolist() == [3, 2, 3]
    raw = fake_splits((images * 255).astype("uint8"), labels)
    monkeypatch.setattr(job, "load_data", lambda config: raw)
    _, messages = caught_warnings(job.prepare_data, config)
    assert not [m for m in messages if "[0, 1]" in m]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(split_at="stage2_blok1_out"), r"Close matches: \['stage2_block1_out'"),
        (dict(method="dml", split_at="stage2_block1_out"), "has no shared trunk"),
    ],
)
def test_a_bad_split_fails_before_the_data_is_read(
    tmp_path, monkeypatch, overrides, message
):
    def load_data(config):
        raise AssertionError("the data was read before the split was checked")

    monkeypatch.setattr(job, "load_data", load_data)
    config = training.TrainConfig(
        dataset="digits", backbone="resnet8", workdir=str(tmp_path), **overrides
    )
    with pytest.raises(ValueError, match=message):
        training.train(config)


def test_the_split_check_passes_for_good_splits():
    job.check_split(training.TrainConfig(backbone="resnet8"))  # its default
    job.check_split(
        training.TrainConfig(backbone="resnet8", split_at="stage1_block1_out")
    )
    job.check_split(dataclasses.replace(training.TrainConfig(), method="dml"))
