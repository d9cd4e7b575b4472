"""Resuming a run after a crash, at the exact step.

`keras.callbacks.BackupAndRestore` writes the model's weights (students,
mean teachers, step counter, best-peer record, augmentation random states)
and the optimizer's state every `save_freq` steps. Keras then restarts an
interrupted epoch from its first batch, which would repeat the batches done
before the crash; `train` instead restores once, before `fit`
(`restore_step`), reads the restored step counter and feeds `fit` the
training stream from the next batch on (`Dataset.repeat().skip(step)`),
finishing the interrupted epoch with a first `fit` call of the remaining
steps (`fit_plan`). `check_workdir_config` refuses to resume a run of
another configuration.
"""

import dataclasses
import json
import os

import keras

from keras_pcl import _compat
from keras_pcl.training import cluster

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = (
    "epochs",
    "verbose",
    "workdir",
    "export_format",
    "save_freq",
    "data_dir",
    "download",
    # The same global batches on any number of processes: a run may resume
    # on another cluster (and every process has its own process_id).
    "coordinator_address",
    "num_processes",
    "process_id",
)


class _RestoreOnceBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that restores at its first `on_train_begin` only.

    `train` calls that first one itself, before `fit`, and starts each `fit`
    at the right epoch and batch. A restore inside a later `fit` would roll
    back the steps of the previous one, and the epoch that the parent class
    sets on the model would override `fit`'s `initial_epoch`.

    With `writer=False` (processes other than 0 of a multi-process run) it
    restores like the others but never writes: one process writes the
    shared backup, and every process restores the same one. The writer
    saves outside the Keras distribution: Keras' saving builds a reference
    optimizer, whose variables would otherwise be placed on every process's
    devices, a collective that the other processes never join.
    """

    def __init__(self, *args, writer=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored = False
        self._writer = writer

    def _save_model(self):
        if not self._writer:
            return
        # The last step's results first: JAX runs steps asynchronously, and
        # a step that failed (another process was lost) must raise before
        # the backup file is opened, not halfway through writing it.
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        with cluster.without_distribution():
            super()._save_model()

    def on_train_begin(self, logs=None):
        if self._restored:
            return
        self._restored = True
        super().on_train_begin(logs)
        _compat.clear_initial_epoch(self.model)  # `train` decides the epoch.


def backup_callback(directory, save_freq, writer=True):
    """The backup callback of a run: every `save_freq` steps (0: per epoch).

    `writer=False`: restores, never saves (see `_RestoreOnceBackup`). The
    previous backup is kept beside the latest (Keras' `double_checkpoint`),
    and restored if the latest is unreadable (a kill while writing it).
    """
    return _RestoreOnceBackup(
        directory,
        save_freq=save_freq or "epoch",
        delete_checkpoint=False,
        # Keeps the previous backup while writing the next: a process killed
        # mid-write resumes from the previous one.
        double_checkpoint=True,
        writer=writer,
    )


def restore_step(backup, model):
    """Restores `model` from `backup` (if there is one); the step it is at.

    Restores through the callback's own hook, before `fit`, to know where
    the run stands; the `fit` calls then only save.
    """
    backup.set_model(model)
    backup.on_train_begin()
    return int(keras.ops.convert_to_numpy(model.step_counter.value))


def fit_plan(initial_step, steps_per_epoch, epochs):
    """The `fit` calls that train from `initial_step` to the last epoch.

    Returns:
        A list of `(initial_epoch, end_epoch, steps_per_epoch)`: first the
        rest of an interrupted epoch, if any, then the remaining epochs.
    """
    epoch, done_in_epoch = divmod(initial_step, steps_per_epoch)
    fits = []
    if initial_step < epochs * steps_per_epoch and done_in_epoch:
        fits.append((epoch, epoch + 1, steps_per_epoch - done_in_epoch))
        epoch += 1
    if epoch < epochs:
        fits.append((epoch, epochs, steps_per_epoch))
    return fits


def check_workdir_config(config, writer=True):
    """Writes `config.json` in the workdir, refusing another run's backup.

    Every process of a multi-process run checks; the `writer` (process 0)
    writes, through a temporary file renamed into place, so that another
    process never reads half a file.

    Raises:
        ValueError: `config.workdir` holds a backup of a run whose
            configuration differs in a field that is not one of
            `RESUMABLE_FIELDS`.
    """
    path = os.path.join(config.workdir, "config.json")
    current = _jsonable(dataclasses.asdict(config))
    if os.path.exists(path) and os.path.isdir(os.path.join(config.workdir, "backup")):
        with open(path) as f:
            previous = json.load(f)
        # Fields added since that run was written have their defaults.
        defaults = _jsonable(dataclasses.asdict(type(config)()))
        for key, value in defaults.items():
            previous.setdefault(key, value)
        changed = sorted(
            key
            for key in set(current) | set(previous)
            if key not in RESUMABLE_FIELDS and current.get(key) != previous.get(key)
        )
        if changed:
            details = ", ".join(
                f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed
            )
            raise ValueError(
                f"`workdir` {config.workdir!r} holds a backup of a run with "
                f"another configuration ({details}); resuming would mix the "
                "two. Use another --workdir, or delete this one to start "
                f"over. Received: workdir={config.workdir!r}"
            )
    if not writer:
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)
    os.replace(temporary, path)


def _jsonable(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
