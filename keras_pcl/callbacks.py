"""Callbacks for `PeerCollaborativeModel`: the best peer, a stop on NaN."""

import os
import warnings

import keras
import numpy as np

from keras_pcl.export import FORMATS
from keras_pcl.validation import check
from keras_pcl.validation import check_choice


class BestPeerTracker(keras.callbacks.Callback):
    """Keeps the best peer by validation accuracy and makes it the deployed one.

    At the end of every epoch with validation data it reads each peer's
    validation accuracy from the epoch logs (by default
    `val_mean_teacher_{j}_accuracy`, the networks PCL deploys), and when the
    best of them beats the best seen so far it

    * records `(peer, epoch, score)` in the model (`model.best_peer`; stored
      with the weights, so `model.save`, `load_model` and
      `keras.callbacks.BackupAndRestore` keep it),
    * sets `model.deploy_peer`, so `predict`, `get_peer(model.deploy_peer)`
      and `export_peer(peer="best")` use it,
    * writes that peer to `filepath` if one is given (like `ModelCheckpoint`
      with `save_best_only=True`, for one deployable peer).

    Without validation data it warns once and leaves `deploy_peer` alone:
    picking a peer on training accuracy would reward the peer that overfits.

    When resuming (e.g. after `BackupAndRestore` restored the weights), the
    recorded best is read back from the model at the start of the first
    epoch, so a resumed run only replaces it with a better one. Put this callback before
    `BackupAndRestore` in the `callbacks` list so that an epoch's record is in
    the backup written at the end of that epoch.

    Args:
        mean_teacher: monitor (and export) the peers' mean teachers
            (`val_mean_teacher_{j}_accuracy`) or, if False, the peers
            themselves (`val_peer_{j}_accuracy`). Defaults to the mean
            teachers for PCL and to the peers for the baselines of
            `keras_pcl.baselines`, which have no mean teachers.
        filepath: optional path to write the best peer to whenever it
            improves, e.g. `"best_peer.keras"` or a SavedModel directory. It
            may contain `{epoch}` (1-based), `{peer}` and `{score}` fields.
        export_format: format of `filepath`, see
            `PeerCollaborativeModel.export_peer`. Defaults to `"keras"`.
        verbose: 1 prints a line when the best peer changes.

    Example:

    ```python
    tracker = keras_pcl.callbacks.BestPeerTracker(filepath="best_peer.keras")
    model.fit(x, y, validation_data=(x_val, y_val), epochs=300,
              callbacks=[tracker])
    model.best_peer          # BestPeer(peer=2, epoch=287, score=0.9481)
    model.export_peer("served", peer="best")
    ```
    """

    def __init__(
        self,
        mean_teacher=None,
        filepath=None,
        export_format="keras",
        verbose=1,
    ):
        super().__init__()
        check(
            mean_teacher is None or isinstance(mean_teacher, bool),
            "mean_teacher",
            mean_teacher,
            "True, False or None",
        )
        check_choice("export_format", export_format, FORMATS)
        if filepath is not None and not isinstance(filepath, (str, os.PathLike)):
            raise ValueError(
                "`filepath` must be a path (str) or None. "
                f"Received: filepath={filepath!r}"
            )
        self.mean_teacher = mean_teacher
        self.filepath = None if filepath is None else os.fspath(filepath)
        self.export_format = export_format
        self.verbose = verbose
        self._warned = False
        self._synced = False

    def monitor(self, peer):
        """The log key read for `peer`."""
        if self.mean_teacher:
            return f"val_mean_teacher_{peer}_accuracy"
        return f"val_peer_{peer}_accuracy"

    def on_train_begin(self, logs=None):
        from keras_pcl.multi_branch import MultiBranchModel

        if not isinstance(self.model, MultiBranchModel):
            raise ValueError(
                "`BestPeerTracker` works with a "
                "`keras_pcl.PeerCollaborativeModel` or a model of "
                "`keras_pcl.baselines`. Received: model of type "
                f"{type(self.model).__name__}"
            )
        if self.mean_teacher is None:
            self.mean_teacher = self.model.has_mean_teachers
        if self.mean_teacher and not self.model.has_mean_teachers:
            raise ValueError(
                f"{type(self.model).__name__} has no mean teachers; use "
                "`BestPeerTracker(mean_teacher=False)` to pick the best peer. "
                "Received: mean_teacher=True"
            )
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        # After every `on_train_begin`, so after `BackupAndRestore` restored
        # the weights, which hold the record of an interrupted run.
        if not self._synced:
            self._synced = True
            record = self.model.best_peer
            if record is not None:
                self.model.deploy_peer = record.peer

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        # Only the peers that the method deploys compete (OKDDip: its leader).
        peers = self.model.deployable_peers
        keys = {j: self.monitor(j) for j in peers}
        missing = [key for key in keys.values() if key not in logs]
        if missing:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"BestPeerTracker: no '{missing[0]}' in the epoch logs "
                    "(fit without `validation_data`?). Keeping "
                    f"deploy_peer={self.model.deploy_peer}; pass validation "
                    "data to pick the best peer.",
                    stacklevel=2,
                )
            return
        # As stored in the model (float32), so that a tie is not a gain.
        scores = {j: float(np.float32(logs[key])) for j, key in keys.items()}
        peer = max(peers, key=lambda j: scores[j])
        record = self.model.best_peer
        if record is not None and not scores[peer] > record.score:
            return
        self.model.record_best_peer(peer, epoch, scores[peer])
        if self.verbose:
            previous = "none" if record is None else f"{record.score:.4f}"
            print(
                f"\nEpoch {epoch + 1}: best peer is {peer} "
                f"({keys[peer]}={scores[peer]:.4f}, previous best {previous})"
            )
        if self.filepath is not None:
            path = self.filepath.format(epoch=epoch + 1, peer=peer, score=scores[peer])
            self.model.export_peer(
                path,
                peer=peer,
                mean_teacher=self.mean_teacher,
                format=self.export_format,
                overwrite=True,
            )


class NonFiniteError(RuntimeError):
    """Training met a NaN or Inf loss or weight (`TerminateOnNonFinite`)."""


def non_finite_weights(model):
    """The paths of `model`'s float weights that hold a NaN or Inf.

    A host-side check (it reads every weight): for the end of a run or a
    backup, not for every step (see `TerminateOnNonFinite`).
    """
    return [
        variable.path
        for variable in _finite_weights(model)
        if not np.isfinite(keras.ops.convert_to_numpy(variable.value)).all()
    ]


def _finite_weights(model):
    if hasattr(model, "_finite_weights"):  # keras-pcl's models.
        return model._finite_weights()
    return [v for v in model.weights if "float" in str(v.dtype)]


def non_finite_message(model, what):
    """The message of a `NonFiniteError`: where, which weights, what to do."""
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    bad = non_finite_weights(model)
    total = len(_finite_weights(model))
    weights = (
        f"{len(bad)} of {total} weight variables are NaN or Inf (e.g. "
        f"{', '.join(bad[:3])})"
        if bad
        else "every weight is still finite"
    )
    return (
        f"Training stopped after step {step}: {what}; {weights}. Earlier "
        "backups and saved peers are kept as they were. Usual causes: a NaN "
        "or Inf in the input images (check `np.isfinite(images).all()`), a "
        "learning rate too high for this model (lower `lr`), or float16 "
        "overflowing without loss scaling."
    )


class TerminateOnNonFinite(keras.callbacks.TerminateOnNaN):
    """Stops training at a NaN or Inf loss or weight, on every backend.

    `keras.callbacks.TerminateOnNaN` reads the loss only, and a NaN can
    reach the weights while the loss stays finite (on JAX under jit, one
    NaN pixel leaves the loss finite and turns dozens of weights NaN). The
    models of keras-pcl log `all_finite` (1 while the loss and every weight
    are finite; computed inside the compiled step, no per-step Python or
    host round trip); this callback stops when the loss, `all_finite`, or
    their `val_` versions say otherwise, at the end of every batch
    (execution, with `steps_per_execution > 1`: `all_finite` is an epoch
    mean, so a step inside the execution counts too) and of every epoch.

    By default it raises a `NonFiniteError` that names the step and the
    non-finite weights: the callbacks after it in the list do not run, so a
    `BackupAndRestore` or `BestPeerTracker` placed after it does not save
    the non-finite weights over the last good ones. Put it first.

    Args:
        raise_error: raise `NonFiniteError` (default) or, if False, print the
            message and set `model.stop_training` as `TerminateOnNaN` does
            (Keras then still runs the epoch's end: validation and
            `on_epoch_end` of the other callbacks).

    Example:

    ```python
    model.fit(
        x, y, validation_data=(x_val, y_val), epochs=300,
        callbacks=[
            keras_pcl.callbacks.TerminateOnNonFinite(),  # first
            keras_pcl.callbacks.BestPeerTracker(filepath="best.keras"),
            keras.callbacks.BackupAndRestore("backup"),
        ],
    )
    ```
    """

    def __init__(self, raise_error=True):
        check(isinstance(raise_error, bool), "raise_error", raise_error, "a bool")
        super().__init__(raise_error=raise_error)

    def on_batch_end(self, batch, logs=None):
        self._check(logs, f"batch {batch}", prefix="")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"epoch {epoch + 1}", prefix="val_")
        self._check(logs, f"epoch {epoch + 1}", prefix="")

    def _check(self, logs, where, prefix):
        logs = logs or {}
        loss, finite = logs.get(f"{prefix}loss"), logs.get(f"{prefix}all_finite")
        if loss is not None and not np.isfinite(loss):
            what = f"the {prefix}loss of {where} is {float(loss)}"
        elif finite is not None and float(finite) < 1:
            stage = "validation" if prefix else "training"
            what = f"{stage} met a NaN or Inf weight or loss by {where}"
        else:
            return
        message = non_finite_message(self.model, what)
        if self.raise_error:
            raise NonFiniteError(message)
        print(message, flush=True)
        self.model.stop_training = True
