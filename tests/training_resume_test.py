"""`keras_pcl.training.resume`: backups of short runs, damaged backups, resume line."""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_pcl import training
from keras_pcl.training import resume
from tests.examples.quickstart_test import write_image_folder


def dense_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    return model


def fit(model, backup, epochs=2, steps=3):
    x = np.arange(3 * steps * 4, dtype="float32").reshape(-1, 3) / 10
    y = np.ones((len(x), 2), "float32")
    model.fit(x, y, batch_size=4, epochs=epochs, callbacks=[backup], verbose=0)


def weights_in(path, tmp_path=None):
    if not path.endswith(".weights.h5"):  # Keras reads this name only.
        path = shutil.copyfile(path, os.path.join(tmp_path, "copy.weights.h5"))
    model = dense_model(seed=1)
    model.load_weights(path)
    return model.get_weights()


def train_twice(tmp_path, backup_dir):
    """Two backups of different weights: `latest` and the previous `.bkp`."""
    fit(dense_model(), resume.backup_callback(backup_dir, save_freq=1), epochs=1)
    latest = os.path.join(backup_dir, "latest.weights.h5")
    previous = latest + ".bkp"
    assert os.path.exists(previous)
    return latest, previous


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return data[: len(data) // 2]


def restore(backup_dir, seed=2):
    model = dense_model(seed)
    backup = resume.backup_callback(backup_dir, save_freq=500)
    backup.set_model(model)
    backup.on_train_begin()
    return model, backup


def test_a_run_shorter_than_save_freq_is_backed_up_every_epoch(tmp_path):
    backup_dir = str(tmp_path / "backup")
    model = dense_model()
    # 6 steps in all, far fewer than save_freq: a backup per epoch all the same.
    fit(model, resume.backup_callback(backup_dir, save_freq=500), epochs=2)
    path = os.path.join(backup_dir, "latest.weights.h5")
    for saved, final in zip(weights_in(path), model.get_weights()):
        np.testing.assert_array_equal(saved, final)
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2


def test_a_damaged_newest_backup_is_set_aside_and_the_previous_restored(tmp_path):
    backup_dir = str(tmp_path / "backup")
    latest, previous = train_twice(tmp_path, backup_dir)
    expected = weights_in(previous, tmp_path)
    damaged = truncate(latest)
    with pytest.warns(UserWarning, match="latest.weights.h5 is damaged") as record:
        model, backup = restore(backup_dir)
    messages = "\n".join(str(w.message) for w in record)
    assert f"moved aside to {latest}.damaged" in messages
    assert f"Resuming from the previous backup {previous}" in messages
    assert backup.restored_from == previous
    for restored, saved in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(restored, saved)
    # The evidence is kept as it was, beside the good backup.
    with open(f"{latest}.damaged", "rb") as f:
        assert f.read() == damaged
    assert not os.path.exists(latest)
    assert os.path.exists(previous)


def test_no_readable_backup_stops_with_the_paths_and_how_to_start_over(tmp_path):
    backup_dir = str(tmp_path / "backup")
    latest, previous = train_twice(tmp_path, backup_dir)
    truncate(latest)
    truncate(previous)
    with pytest.warns(UserWarning, match="is damaged"):
        with pytest.raises(resume.DamagedBackupError) as error:
            restore(backup_dir)
    message = str(error.value)
    assert f"{latest} (now {latest}.damaged)" in message
    assert f"{previous} (now {previous}.damaged)" in message
    assert f"rm -r {backup_dir}" in message
    assert os.path.exists(f"{latest}.damaged") and os.path.exists(f"{previous}.damaged")
    # A rerun does not silently start over past the damaged backups...
    with pytest.raises(resume.DamagedBackupError, match="damaged"):
        restore(backup_dir)
    # ...until they are removed, as the message says.
    shutil.rmtree(backup_dir)
    assert restore(backup_dir)[1].restored_from is None


def test_a_second_damaged_copy_does_not_overwrite_the_first(tmp_path):
    backup_dir = str(tmp_path / "backup")
    latest, _ = train_twice(tmp_path, backup_dir)
    truncate(latest)
    with pytest.warns(UserWarning, match="is damaged"):
        restore(backup_dir)
    fit(dense_model(), resume.backup_callback(backup_dir, save_freq=1), epochs=1)
    truncate(latest)
    with pytest.warns(UserWarning, match=f"moved aside to {latest}.damaged.1"):
        restore(backup_dir)
    assert os.path.exists(f"{latest}.damaged")


@pytest.mark.backend_independent  # Pure Python: the same on every backend.
def test_describe_resume_names_the_path_step_and_1_based_epoch():
    line = resume.describe_resume("w/backup/latest.weights.h5", 7, 5, 2)
    assert line == (
        "Resuming from the backup w/backup/latest.weights.h5 (step 7): "
        "continuing at epoch 2, batch 3 of 5."
    )
    assert "the start of epoch 2 of 3" in resume.describe_resume("p", 5, 5, 3)
    assert "nothing to train" in resume.describe_resume("p", 10, 5, 2)


def tiny_config(data, workdir, **overrides):
    config = dict(
        dataset=data,
        backbone="resnet8",
        num_peers=2,
        epochs=1,
        batch_size=4,
        rampup_epochs=1.0,
        lr_decay_epochs=(2,),
        validation_split=0.25,
        workdir=str(workdir),
        export_format="none",
        steps_per_epoch=2,
        verbose=1,
    )
    config.update(overrides)
    return training.TrainConfig(**config)


# `train`'s own Python, the same on every backend (see above).


@pytest.mark.backend_independent
def test_a_rerun_says_where_it_resumes_and_warns_before_overwriting(tmp_path, capsys):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=4, size=8)
    workdir = tmp_path / "run"
    # Default save_freq (500 steps) on a 2-step epoch: backed up all the same.
    assert training.TrainConfig().save_freq > 2
    training.train(tiny_config(data, workdir))
    assert "Resuming" not in capsys.readouterr().out
    result = training.train(tiny_config(data, workdir, epochs=2))
    assert result["initial_step"] == 2
    backup = os.path.join(str(workdir), "backup", "latest.weights.h5")
    assert (
        f"Resuming from the backup {backup} (step 2): continuing at the start "
        "of epoch 2 of 2." in capsys.readouterr().out
    )
    # Outputs but no backup: a rerun starts over, and says it overwrites them.
    shutil.rmtree(os.path.join(str(workdir), "backup"))
    with pytest.warns(UserWarning, match="best_peer.keras, pcl.keras"):
        training.train(tiny_config(data, workdir, epochs=2))


@pytest.mark.backend_independent  # File-system checks before any backend work.
def test_a_workdir_that_cannot_be_written_is_refused_before_training(
    tmp_path, monkeypatch
):
    from keras_pcl import cli

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    workdir = str(a_file / "run")
    loaded = []
    monkeypatch.setattr(training.job, "load_data", lambda *a: loaded.append(a))
    with pytest.raises(ValueError) as error:
        training.train(training.TrainConfig(dataset="digits", workdir=workdir))
    assert "`workdir` cannot be written: Not a directory" in str(error.value)
    assert f"Received: workdir={workdir!r}" in str(error.value)
    assert loaded == []  # Before any data or training.
    assert cli.main(["train", "--dataset=digits", f"--workdir={workdir}"]) == 1


@pytest.mark.backend_independent  # Reads and writes config.json only.
def test_resuming_with_other_epochs_says_the_schedule_moves(tmp_path):
    import warnings

    from keras_pcl.training import resume

    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "backup"))
    first = training.TrainConfig(backbone="resnet8", epochs=30, workdir=workdir)
    resume.check_workdir_config(first)
    longer = dataclasses.replace(first, epochs=60)
    with pytest.warns(UserWarning) as caught:
        resume.check_workdir_config(longer)
    message = str(caught[0].message)
    assert "Resuming a run of 30 epochs with epochs=60" in message
    assert "the ramp-up ends at epoch 16, not 8" in message
    assert "drops at epochs 30, 45, not 15, 22.5" in message
    assert "pass --rampup_epochs=8 --lr_decay_epochs=15,22.5" in message
    # The first run's schedule, given explicitly: nothing moves.
    pinned = dataclasses.replace(
        longer, rampup_epochs=8.0, lr_decay_epochs=(15.0, 22.5)
    )
    os.remove(os.path.join(workdir, "config.json"))
    resume.check_workdir_config(dataclasses.replace(pinned, epochs=30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resume.check_workdir_config(pinned)
