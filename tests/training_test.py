"""`keras_pcl.training`: the example scripts' job, resuming after SIGKILL."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_pcl import training
from tests.examples.quickstart_test import write_image_folder

SCRIPT = os.path.join(os.path.dirname(__file__), "resumable_run.py")


def run(*args):
    return subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def final_weights(workdir):
    model = keras.saving.load_model(os.path.join(workdir, "pcl.keras"))
    return {w.path: np.array(v) for w, v in zip(model.weights, model.get_weights())}


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=12, size=8)
    uninterrupted = run(data, tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    workdir = tmp_path / "preempted"
    killed = run(data, workdir, 7)  # epoch 2 of 2, its third batch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "pcl.keras").exists()
    resumed = run(data, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    initial, final = [int(v) for v in resumed.stdout.split()[1::2]]
    assert 0 < initial < 7 and initial % 5 != 0, resumed.stdout  # mid-epoch backup
    assert final == 10  # 2 epochs of 5 steps: nothing lost, nothing twice

    expected = final_weights(tmp_path / "uninterrupted")
    actual = final_weights(workdir)
    assert expected.keys() == actual.keys()
    assert any("mean_teacher" in k for k in expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-6, err_msg=key)


def test_a_workdir_of_another_configuration_is_refused(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=8, size=8)
    workdir = tmp_path / "run"
    previous = training.TrainConfig(dataset=data, workdir=str(workdir), lr=0.1)
    # What a run leaves in its workdir (see `train`'s docstring).
    (workdir / "backup").mkdir(parents=True)
    with open(workdir / "config.json", "w") as f:
        json.dump(training._jsonable(dataclasses.asdict(previous)), f)
    changed = training.TrainConfig(dataset=data, workdir=str(workdir), lr=0.5)
    with pytest.raises(ValueError, match=r"another configuration \(lr: 0.1 -> 0.5\)"):
        training.train(changed)
    # Fields that may change on a resume (e.g. more epochs) are accepted
    # up to the data: this one fails later, on the missing dataset.
    more_epochs = training.TrainConfig(
        dataset=str(tmp_path / "nowhere"), workdir=str(workdir), lr=0.1, epochs=400
    )
    more_epochs_json = training._jsonable(dataclasses.asdict(more_epochs))
    with open(workdir / "config.json", "w") as f:
        json.dump({**more_epochs_json, "epochs": 300}, f)
    with pytest.raises(ValueError, match="no directory"):
        training.train(more_epochs)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategy", "horovod", "`strategy` must be one of"),
        ("mixed_precision", "fp8", "`mixed_precision` must be one of"),
        ("backbone", "resnet9", "`backbone` must be one of"),
        ("export_format", "pb", "`export_format` must be one of"),
        ("num_peers", 1, "`num_peers` must be an int >= 2"),
    ],
)
def test_bad_configuration_raises_a_clear_error(field, value, message):
    config = training.TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_dataset_that_is_neither_known_nor_a_folder_raises(tmp_path):
    config = training.TrainConfig(
        dataset=str(tmp_path / "nowhere"), workdir=str(tmp_path / "w")
    )
    with pytest.raises(ValueError, match="no directory"):
        training.train(config)


def test_strategies_this_machine_lacks_raise_clear_errors():
    with pytest.raises(ValueError, match="strategy='gpu'"):
        training.make_distribution("gpu")
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="not available on the torch backend"):
            training.make_distribution("mirrored")
    else:
        with pytest.raises(ValueError, match="strategy='tpu'"):
            training.make_distribution("tpu")
    assert training.make_distribution("cpu").num_replicas == 1


def test_global_batch_must_split_evenly_over_replicas(tmp_path, monkeypatch):
    two = training.Distribution("mirrored", 2)
    monkeypatch.setattr(training, "make_distribution", lambda name: two)
    config = training.TrainConfig(
        dataset=str(tmp_path), batch_size=5, workdir=str(tmp_path / "w")
    )
    with pytest.raises(ValueError, match="divisible by the 2 replicas.*batch_size=5"):
        training.train(config)


def test_float16_on_cpu_warns_and_still_sets_the_policy():
    try:
        with pytest.warns(UserWarning, match="float16.*CPU"):
            training.set_mixed_precision("float16", training.Distribution("cpu", 1))
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
