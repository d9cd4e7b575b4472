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

A backup is written every `save_freq` steps and at the end of every epoch
(a short run is protected too). Restoring reads the newest backup, else
the previous one (Keras' `double_checkpoint`); a damaged one (a kill while
it was written, a full disk) is reported by path and moved aside as
`<name>.damaged` (never overwritten), and if no good one is left the run
stops with the command to start over (`DamagedBackupError`).
"""

import dataclasses
import glob
import json
import os
import shutil
import warnings

import keras

from keras_pcl import _compat
from keras_pcl.callbacks import NonFiniteError
from keras_pcl.callbacks import non_finite_message
from keras_pcl.callbacks import non_finite_weights
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


class DamagedBackupError(ValueError):
    """No backup of a workdir can be read, and some are damaged."""


class _RestoreOnceBackup(_compat.BackupAndRestore):
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

    With an integer `save_freq` it also backs up at the end of every epoch
    (once per step: not again if the last batch's backup is that step's).
    It never writes non-finite weights over a good backup: it raises
    `keras_pcl.callbacks.NonFiniteError` instead.
    A damaged backup found when restoring is moved aside (see
    `restore_newest_good`); `restored_from` is the path restored, or None.
    """

    def __init__(self, *args, writer=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored = False
        self._writer = writer
        self._saved_step = None
        self.restored_from = None

    def save_backup(self):
        if not self._writer:
            return
        # The last step's results first: JAX runs steps asynchronously, and
        # a step that failed (another process was lost) must raise before
        # the backup file is opened, not halfway through writing it.
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step == self._saved_step:
            return
        if non_finite_weights(self.model):  # Keeps the last good backup.
            raise NonFiniteError(
                non_finite_message(
                    self.model, f"the backup of step {step} was not written"
                )
            )
        with cluster.without_distribution():
            self.write_backup()
        self._saved_step = step

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":  # Every epoch too: short runs.
            self.save_backup()

    def on_train_begin(self, logs=None):
        if self._restored:
            return
        self._restored = True
        self.restored_from = self.restore_newest_good()

    def restore_newest_good(self):
        """Loads the newest readable backup; its path, or None if none exists.

        The newest backup, else the previous one. A damaged one is reported
        (a warning naming it) and, by the writer, renamed to
        `<name>.damaged` (`.damaged.1`, ... if taken), so that the next
        backup does not overwrite the evidence.

        Raises:
            DamagedBackupError: no backup loads and some are damaged (also
                ones moved aside by an earlier run); the message names them
                and says how to start over.
        """
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, the model must be "
                f"built before `fit`. Received: model={self.model.name!r}"
            )
        damaged = []
        for path in (self.weights_path, self.previous_weights_path):
            if not os.path.exists(path):
                continue
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            try:
                self._load_weights(path)
            except OSError as error:  # h5py: truncated, empty, not HDF5.
                damaged.append(self._set_aside(path, error))
                continue
            if damaged:
                warnings.warn(
                    f"Resuming from the previous backup {path} instead.",
                    stacklevel=2,
                )
            return path
        damaged += [
            (path, path)
            for path in sorted(glob.glob(os.path.join(self.backup_dir, "*.damaged*")))
            if all(path != aside for _, aside in damaged)
        ]
        if damaged:
            listed = ", ".join(
                aside if aside == path else f"{path} (now {aside})"
                for path, aside in damaged
            )
            raise DamagedBackupError(
                f"No backup in {self.backup_dir!r} can be read: damaged "
                f"backups: {listed}. Nothing was overwritten. To start over "
                f"from step 0, remove them (`rm -r {self.backup_dir}`) and "
                "rerun the same command, or rerun with another --workdir. "
                f"Received: backup_dir={self.backup_dir!r}"
            )
        return None

    def _load_weights(self, path):
        if path.endswith(".weights.h5"):
            self.model.load_weights(path)
            return
        # Keras reads weights from a `.weights.h5` name only: the previous
        # backup (`.bkp`) is read through a copy, removed after.
        copy = os.path.join(self.backup_dir, f"restoring.{os.getpid()}.weights.h5")
        shutil.copyfile(path, copy)
        try:
            self.model.load_weights(copy)
        finally:
            os.remove(copy)

    def _set_aside(self, path, error):
        """Warns about the damaged backup `path`; renames it. `(path, new)`."""
        aside = path
        if self._writer:
            aside = f"{path}.damaged"
            count = 0
            while os.path.exists(aside):
                count += 1
                aside = f"{path}.damaged.{count}"
            os.replace(path, aside)
            metadata = {
                self.weights_path: self.metadata_path,
                self.previous_weights_path: self.previous_metadata_path,
            }[path]
            if os.path.exists(metadata):
                os.replace(metadata, aside.replace(path, metadata))
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        moved = f"; moved aside to {aside}" if aside != path else ""
        warnings.warn(
            f"The backup {path} is damaged and cannot be read ({reason}){moved}.",
            stacklevel=3,
        )
        return path, aside


def backup_callback(directory, save_freq, writer=True):
    """The backup callback of a run: every `save_freq` steps and every epoch.

    `save_freq=0`: at the end of every epoch only. `writer=False`:
    restores, never saves (see `_RestoreOnceBackup`). The previous backup
    is kept beside the latest (Keras' `double_checkpoint`), and restored if
    the latest is unreadable (a kill while writing it), which is moved
    aside and reported.
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
    the run stands; the `fit` calls then only save. `backup.restored_from`
    is then the path of the backup restored, or None.

    Raises:
        DamagedBackupError: see `_RestoreOnceBackup.restore_newest_good`.
    """
    backup.set_model(model)
    backup.on_train_begin()
    return int(keras.ops.convert_to_numpy(model.step_counter.value))


def describe_resume(path, step, steps_per_epoch, epochs):
    """The line that says where a resumed run starts (epochs 1-based)."""
    epoch, batch = divmod(step, steps_per_epoch)
    if step >= epochs * steps_per_epoch:
        where = f"the end of the run (epoch {epochs} of {epochs}): nothing to train"
    elif batch:
        where = f"epoch {epoch + 1}, batch {batch + 1} of {steps_per_epoch}"
    else:
        where = f"the start of epoch {epoch + 1} of {epochs}"
    return f"Resuming from the backup {path} (step {step}): continuing at {where}."


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


def prepare_workdir(workdir):
    """Creates `workdir` and checks that a file can be written in it.

    Before any data is read or a step is trained, so that a path that
    cannot be written (a file, a read-only mount, no permission) stops the
    run at once, named.

    Raises:
        ValueError: `workdir` cannot be created or written.
    """
    probe = os.path.join(os.fspath(workdir), f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = f" ({error.filename})" if error.filename else ""
        raise ValueError(
            f"`workdir` cannot be written: {reason}{where}. Pass a --workdir "
            "in a folder you can write to (it is created if missing). "
            f"Received: workdir={workdir!r}"
        ) from None


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
        _warn_moved_schedule(previous, config)
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


def _warn_moved_schedule(previous, config):
    """Warns when a resumption with other `epochs` moves a fractional schedule."""
    from keras_pcl.training.config import epochs_of_run

    before = previous.get("epochs")
    if before == config.epochs or not isinstance(before, int):
        return
    moved, keep = [], []
    if config.rampup_epochs is None:
        old = epochs_of_run(config.rampup_fraction, before)
        new = epochs_of_run(config.rampup_fraction, config.epochs)
        moved.append(f"the ramp-up ends at epoch {new:g}, not {old:g}")
        keep.append(f"--rampup_epochs={old:g}")
    if config.lr_decay_epochs is None and config.lr_decay_fractions:
        old = [epochs_of_run(f, before) for f in config.lr_decay_fractions]
        new = [epochs_of_run(f, config.epochs) for f in config.lr_decay_fractions]
        moved.append(
            "the learning rate drops at epochs "
            f"{', '.join(f'{e:g}' for e in new)}, not "
            f"{', '.join(f'{e:g}' for e in old)}"
        )
        keep.append(f"--lr_decay_epochs={','.join(f'{e:g}' for e in old)}")
    if moved:
        warnings.warn(
            f"Resuming a run of {before} epochs with epochs={config.epochs}: "
            f"the schedule is a fraction of the run, so {'; '.join(moved)} "
            "(from now on). To keep the first run's schedule, pass "
            f"{' '.join(keep)}.",
            stacklevel=3,
        )


def _jsonable(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
