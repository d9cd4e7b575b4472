"""`keras_pcl.callbacks.TerminateOnNonFinite` and the `all_finite` log."""

import json
import os

import h5py
import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.callbacks import NonFiniteError
from keras_pcl.callbacks import TerminateOnNonFinite
from keras_pcl.training import resume
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def make_model(steps_per_execution=1, lr=0.1):
    keras.utils.set_random_seed(5)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), num_classes=3, split_at="split", rampup_steps=4
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr), steps_per_execution=steps_per_execution
    )
    return model


def data_with_a_nan_pixel(batch_index, n=24, batch_size=4):
    x, y = colour_dataset(n)
    x = x.astype("float32")
    x[batch_index * batch_size, 3, 3, 0] = np.nan
    return x, y


def fit(model, x, y, callbacks, epochs=1):
    return model.fit(
        x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks
    )


def steps_done(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_a_clean_run_logs_all_finite_and_is_not_stopped():
    model = make_model()
    x, y = colour_dataset(16)
    history = fit(model, x, y, [TerminateOnNonFinite()], epochs=2)
    assert history.history["all_finite"] == [1.0, 1.0]
    assert steps_done(model) == 8


def test_one_nan_pixel_stops_training_with_a_clear_error():
    # On JAX under jit the loss of this batch stays finite while weights turn
    # NaN (`TerminateOnNaN` never fires); `all_finite` sees the weights.
    model = make_model()
    x, y = data_with_a_nan_pixel(batch_index=1)
    with pytest.raises(NonFiniteError) as error:
        fit(model, x, y, [TerminateOnNonFinite()])
    # Stopped at the NaN batch (step 2: its loss) or the next (its weights).
    assert steps_done(model) in (2, 3)
    message = str(error.value)
    assert f"after step {steps_done(model)}" in message
    assert "weight variables are NaN or Inf" in message
    assert "np.isfinite(images).all()" in message


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="torch has no steps_per_execution"
)
def test_steps_per_execution_still_sees_a_nan_inside_an_execution():
    model = make_model(steps_per_execution=3)
    x, y = data_with_a_nan_pixel(batch_index=1)  # step 2 of the first 3
    with pytest.raises(NonFiniteError, match="NaN"):
        fit(model, x, y, [TerminateOnNonFinite()])
    assert steps_done(model) == 3  # the end of that execution


# The callback's Python on the flag tested above (ci_budget).


@pytest.mark.backend_independent
def test_graceful_mode_sets_stop_training(capsys):
    model = make_model()
    x, y = data_with_a_nan_pixel(batch_index=1)
    fit(model, x, y, [TerminateOnNonFinite(raise_error=False)])
    assert model.stop_training
    assert steps_done(model) in (2, 3)
    assert "Training stopped after step" in capsys.readouterr().out


def test_the_last_good_backup_survives_a_nan(tmp_path):
    model = make_model()
    x, y = data_with_a_nan_pixel(batch_index=3)
    backup_dir = str(tmp_path / "backup")
    backup = resume.backup_callback(backup_dir, save_freq=1)
    with pytest.raises(NonFiniteError):
        fit(model, x, y, [TerminateOnNonFinite(), backup])
    restored = make_model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(os.path.join(backup_dir, "latest.weights.h5"))
    assert keras_pcl.callbacks.non_finite_weights(restored) == []
    assert int(keras.ops.convert_to_numpy(restored.step_counter.value)) in (2, 3)


# A host-side check of the weights: the same everywhere.


@pytest.mark.backend_independent
def test_the_backup_itself_refuses_to_write_non_finite_weights(tmp_path):
    # Without the stop (or with it after the backup): the backup raises.
    model = make_model()
    x, y = data_with_a_nan_pixel(batch_index=2)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(NonFiniteError, match="was not written"):
        fit(model, x, y, [resume.backup_callback(backup_dir, save_freq=1)])
    restored = make_model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(os.path.join(backup_dir, "latest.weights.h5"))
    assert keras_pcl.callbacks.non_finite_weights(restored) == []


def test_the_training_recipe_stops_on_non_finite_first(tmp_path):
    from keras_pcl import training
    from keras_pcl.training import job

    config = training.TrainConfig(workdir=str(tmp_path))
    paths = job.workdir_paths(config)
    backup = resume.backup_callback(paths["backup"], config.save_freq)
    callbacks = job.job_callbacks(config, paths, backup)
    assert isinstance(callbacks[0], TerminateOnNonFinite)
    assert callbacks[0].raise_error
    assert callbacks.index(backup) > 0


def test_raise_error_must_be_a_bool():
    with pytest.raises(ValueError, match="raise_error"):
        TerminateOnNonFinite(raise_error="yes")


class PoisonAWeight(keras.callbacks.Callback):
    """Turns one weight NaN after `step`, as a diverging update would."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if steps_done(self.model) == self.step:
            variable = self.model.trainable_variables[0]
            variable.assign(keras.ops.full(variable.shape, float("nan")))


# `train`'s callbacks, the same on every backend (ci_budget).


@pytest.mark.backend_independent
def test_the_recipe_stops_and_keeps_the_last_good_backup(tmp_path):
    from keras_pcl import training
    from tests.examples.quickstart_test import write_image_folder

    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=4, size=8)
    config = training.TrainConfig(
        dataset=data,
        backbone="resnet8",
        num_peers=2,
        epochs=3,
        batch_size=4,
        lr_decay_epochs=(3,),
        rampup_epochs=1.0,
        validation_split=0.25,
        workdir=str(tmp_path / "run"),
        export_format="none",
        steps_per_epoch=2,
        verbose=0,
    )
    # Poisoned after step 3 (mid epoch 2): step 4 sees it, before its backup.
    with pytest.raises(NonFiniteError, match="after step 4"):
        training.train(config, callbacks=[PoisonAWeight(3)])
    backup = os.path.join(config.workdir, "backup", "latest.weights.h5")
    with h5py.File(backup, "r") as f:
        arrays = []
        f.visititems(
            lambda name, item: (
                arrays.append(np.asarray(item[()]))
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    floats = [a for a in arrays if np.issubdtype(a.dtype, np.floating)]
    assert len(floats) > 50
    # Every one finite, the best-peer score too (epoch 1 recorded one).
    assert all(np.isfinite(a).all() for a in floats)
    with open(os.path.join(config.workdir, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 1  # The end of epoch 1 (step 2).
