"""`keras_pcl.callbacks.BestPeerTracker`."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.callbacks import BestPeerTracker
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def make_model():
    keras.utils.set_random_seed(5)
    return keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), num_classes=3, split_at="split", rampup_steps=4
    )


def epoch_logs(*accuracies, student=False):
    prefix = "val_peer" if student else "val_mean_teacher"
    return {f"{prefix}_{j}_accuracy": a for j, a in enumerate(accuracies)}


def run_epochs(tracker, model, logs_per_epoch):
    tracker.set_model(model)
    tracker.on_train_begin()
    for epoch, logs in enumerate(logs_per_epoch):
        tracker.on_epoch_begin(epoch)
        tracker.on_epoch_end(epoch, logs)


def test_keeps_the_best_peer_and_deploys_it():
    model = make_model()
    tracker = BestPeerTracker(verbose=0)
    run_epochs(
        tracker,
        model,
        [
            epoch_logs(0.50, 0.60, 0.40),  # best: peer 1 at 0.60
            epoch_logs(0.55, 0.58, 0.59),  # no improvement over 0.60
            epoch_logs(0.70, 0.65, 0.61),  # best: peer 0 at 0.70
            epoch_logs(0.70, 0.69, 0.70),  # ties the best: not an improvement
        ],
    )
    assert model.best_peer.peer == 0
    assert model.best_peer.epoch == 3  # 1-based: the third epoch
    assert model.best_peer.score == pytest.approx(0.70)
    assert model.deploy_peer == 0


def test_the_printed_epoch_is_the_recorded_one(capsys):
    # "Epoch 2: best peer is 1" must not be followed by BestPeer(epoch=1).
    model = make_model()
    tracker = BestPeerTracker(verbose=1)
    run_epochs(tracker, model, [epoch_logs(0.5, 0.4, 0.3), epoch_logs(0.5, 0.9, 0.3)])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("Epoch 2: best peer is 1")
    assert model.best_peer.epoch == 2


def test_monitors_students_when_asked():
    model = make_model()
    tracker = BestPeerTracker(mean_teacher=False, verbose=0)
    logs = {**epoch_logs(0.9, 0.1, 0.1), **epoch_logs(0.1, 0.1, 0.8, student=True)}
    run_epochs(tracker, model, [logs])
    assert model.best_peer.peer == 2
    assert model.deploy_peer == 2


def test_writes_the_best_peer_only_when_it_improves(tmp_path):
    model = make_model()
    pattern = str(tmp_path / "best_epoch{epoch}_peer{peer}.keras")
    tracker = BestPeerTracker(filepath=pattern, verbose=0)
    run_epochs(
        tracker,
        model,
        [
            epoch_logs(0.5, 0.6, 0.4),
            epoch_logs(0.5, 0.5, 0.5),
            epoch_logs(0.5, 0.5, 0.9),
        ],
    )
    assert sorted(os.listdir(tmp_path)) == [
        "best_epoch1_peer1.keras",
        "best_epoch3_peer2.keras",
    ]
    reloaded = keras.saving.load_model(tmp_path / "best_epoch3_peer2.keras")
    images = colour_dataset(4, seed=2)[0].astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)),
        keras.ops.convert_to_numpy(model.get_peer(2)(images)),
        atol=1e-6,
    )


def test_without_validation_data_warns_once_and_keeps_the_default_peer():
    x, y = colour_dataset(32)
    model = make_model()
    model.compile(optimizer="sgd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x, y, batch_size=16, epochs=3, verbose=0, callbacks=[BestPeerTracker()]
        )
    messages = [str(w.message) for w in caught if "BestPeerTracker" in str(w.message)]
    assert len(messages) == 1, messages
    assert "val_mean_teacher_0_accuracy" in messages[0]
    assert model.best_peer is None
    assert model.deploy_peer == 0


def test_record_survives_save_and_load(tmp_path):
    x, y = colour_dataset(64, seed=0)
    x_val, y_val = colour_dataset(32, seed=1)
    model = make_model()
    model.compile(optimizer="sgd")
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[BestPeerTracker(verbose=0)],
    )
    record = model.best_peer
    assert record is not None
    model.save(tmp_path / "pcl.keras")
    reloaded = keras.saving.load_model(tmp_path / "pcl.keras")
    assert reloaded.best_peer.peer == record.peer
    assert reloaded.best_peer.epoch == record.epoch
    assert reloaded.best_peer.score == pytest.approx(record.score)
    assert reloaded.deploy_peer == record.peer


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


class Probe(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "first"):
            self.first = (epoch, self.model.best_peer, self.model.deploy_peer)


def test_a_resumed_run_keeps_the_record_restored_by_backup_and_restore(tmp_path):
    x, y = colour_dataset(64, seed=0)
    x_val, y_val = colour_dataset(32, seed=1)
    backup_dir = str(tmp_path / "backup")

    def fit(model, epochs, extra):
        model.compile(optimizer="sgd")
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=epochs,
            verbose=0,
            validation_data=(x_val, y_val),
            callbacks=[
                BestPeerTracker(verbose=0),
                keras.callbacks.BackupAndRestore(backup_dir),
                *extra,
            ],
        )

    first = make_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(first, epochs=4, extra=[Interrupt(at_epoch=1)])
    record = first.best_peer
    assert record is not None

    resumed = make_model()  # a new process would start from scratch too
    resumed.deploy_peer = (record.peer + 1) % 3
    probe = Probe()
    fit(resumed, epochs=3, extra=[probe])
    epoch, restored, deployed = probe.first
    assert epoch == 2  # resumed after the two backed-up epochs
    assert restored == record
    assert deployed == record.peer
    assert resumed.best_peer.score >= record.score


def test_rejects_other_models_and_bad_arguments():
    with pytest.raises(ValueError, match="export_format.*Received: export_format='h5'"):
        BestPeerTracker(export_format="h5")
    with pytest.raises(
        ValueError,
        match="mean_teacher.*True, False or None.*Received: mean_teacher='yes'",
    ):
        BestPeerTracker(mean_teacher="yes")
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    tracker = BestPeerTracker()
    tracker.set_model(plain)
    with pytest.raises(ValueError, match="PeerCollaborativeModel"):
        tracker.on_train_begin()
