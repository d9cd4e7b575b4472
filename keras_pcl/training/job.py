"""`train`: the whole job, from a `TrainConfig` to the exported peer.

`train` reads as the list of its steps; each is a function of its own that
scripts (`examples/quickstart.py`, `benchmarks/accuracy.py`) reuse:
`build_backbone`, `build_model` and `compile_model` are the recipe,
`workdir_paths` and `export_deployed_peer` the files.
"""

import dataclasses
import os
import warnings

import keras

from keras_pcl import methods
from keras_pcl.callbacks import BestPeerTracker
from keras_pcl.callbacks import TerminateOnNonFinite
from keras_pcl.training import cluster
from keras_pcl.training.config import JIT_COMPILE
from keras_pcl.training.config import build_backbone_fn
from keras_pcl.training.config import run_schedule
from keras_pcl.training.data import in_model_augmentation
from keras_pcl.training.data import load_data
from keras_pcl.training.data import preprocessing_statistics
from keras_pcl.training.data import training_stream
from keras_pcl.training.data import validation_batches
from keras_pcl.training.distribution import enable_op_determinism
from keras_pcl.training.distribution import global_state_restored
from keras_pcl.training.distribution import make_distribution
from keras_pcl.training.distribution import set_mixed_precision
from keras_pcl.training.resume import backup_callback
from keras_pcl.training.resume import check_workdir_config
from keras_pcl.training.resume import describe_resume
from keras_pcl.training.resume import fit_plan
from keras_pcl.training.resume import prepare_workdir
from keras_pcl.training.resume import restore_step


def train(config, callbacks=()):
    """Trains `config.method` as `config` says, resuming from `config.workdir`.

    Writes to `config.workdir`: `config.json` (a later run with another
    configuration refuses to resume), `backup/` (`BackupAndRestore`),
    `logs/` (TensorBoard), `best_peer.keras` (the best peer so far),
    `<method>.keras` (the final model: `pcl.keras` for PCL, `dml.keras` for
    DML, ...) and `export/` (the best peer in `config.export_format`; the
    model's `deploy_peer` if no best peer was recorded, which `train` says).

    Before any step: the split is checked (`check_split`, before the data
    is read), then the data (`check_training_data`: labels in range, the
    pixel scale), and (with `config.verbose`) `data_summary` prints the
    classes, the images per class, skipped files and the run's schedule
    (`run_schedule`: fractions of the run unless given).

    The dtype policy, the Keras distribution and TensorFlow's op
    determinism that `train` sets are restored when it returns or raises.

    Several processes (JAX; `config.coordinator_address`,
    `num_processes`, `process_id`, or Keras' `KERAS_DISTRIBUTION_*`
    variables): every process runs `train` with the same configuration;
    it joins the cluster first (`keras_pcl.training.cluster`; the JAX
    distributed system then stays up for the life of the process), trains
    on its part of every global batch, and process 0 alone writes the
    workdir, which must be shared by every host: all of them restore from
    its backup. Every process returns the same result (its `paths` name
    what process 0 wrote).

    Args:
        config: a `TrainConfig`.
        callbacks: more Keras callbacks for `fit`, after the job's own.

    Returns:
        A dict: `history` (merged `fit` logs), `best_peer`, `model`,
        `initial_step` (0, or the step a resumed run started from),
        `final_step`, `steps_per_epoch`, `paths`, `exported_peer` (the
        exported peer's index, None with `export_format="none"`) and
        `exported_peer_reason` (why that peer).

    Raises:
        ValueError: a bad field of `config`, a workdir written by another
            configuration, a global batch that the replicas cannot split
            evenly, or a multi-process run on a backend without one.
    """
    config.validate()
    cluster.initialize(cluster.cluster_from_config(config))
    prepare_workdir(config.workdir)  # Raises at once if it cannot be written.
    check_workdir_config(config, writer=cluster.is_writer())
    check_split(config)  # Before the data is read: a bad split fails fast.
    with global_state_restored():
        distribution = set_up_process(config)
        run = prepare_data(config, distribution)
        if config.verbose and cluster.is_writer():
            print(data_summary(config, run), flush=True)
        with distribution.scope():
            backbone = build_backbone(config, run.image_shape)
            model = build_model(
                config,
                run.image_shape,
                run.num_classes,
                run.steps_per_epoch,
                preprocessing=model_preprocessing(config, backbone, run.splits),
                backbone=backbone,
            )
            compile_model(model, config, run.steps_per_epoch)
        model.class_names = run.splits.class_names  # Saved and exported.
        paths = workdir_paths(config)
        writer = distribution.is_writer
        backup = backup_callback(paths["backup"], config.save_freq, writer=writer)
        initial_step = restore_step(backup, model)
        if writer:
            report_start(config, paths, backup.restored_from, initial_step, run)
        callbacks = job_callbacks(config, paths, backup, writer) + list(callbacks)
        history = fit(model, config, run, initial_step, callbacks, distribution)
        with cluster.without_distribution():  # Process 0 writes alone.
            if writer:
                model.save(paths["model"])
            exported_peer, reason = export_deployed_peer(
                model, config, paths["export"], write=writer
            )
    return {
        "history": history,
        "best_peer": model.best_peer,
        "model": model,
        "initial_step": initial_step,
        "final_step": int(keras.ops.convert_to_numpy(model.step_counter.value)),
        "steps_per_epoch": run.steps_per_epoch,
        "paths": paths,
        "exported_peer": exported_peer,
        "exported_peer_reason": reason,
    }


def report_start(config, paths, restored_from, initial_step, run):
    """Says where a resumed run starts; warns before a run overwrites outputs.

    Resuming prints `describe_resume`'s line (unless `verbose=0`). A
    workdir that holds an earlier run's outputs (`best_peer.keras`, the
    final model) but no backup to resume from gets a warning: the run
    starts from step 0 and replaces them.
    """
    if restored_from is not None:
        if config.verbose:
            line = describe_resume(
                restored_from, initial_step, run.steps_per_epoch, config.epochs
            )
            print(line, flush=True)
        return
    earlier = [
        os.path.basename(paths[key])
        for key in ("best_peer", "model")
        if os.path.exists(paths[key])
    ]
    if earlier:
        warnings.warn(
            f"`workdir` {config.workdir!r} holds the outputs of an earlier run "
            f"({', '.join(earlier)}) but no backup to resume from: training "
            "starts from step 0 and will overwrite them. Use another "
            "--workdir to keep them.",
            stacklevel=3,
        )


def set_up_process(config):
    """Seeds, op determinism, the distribution and the dtype policy.

    Returns:
        The `Distribution` to build the model in.
    """
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        enable_op_determinism()
    distribution = make_distribution(config.strategy)
    replicas = distribution.num_replicas
    if config.batch_size % replicas:
        processes = distribution.num_processes
        where = f" on {processes} processes" if processes > 1 else ""
        raise ValueError(
            f"`batch_size` must be divisible by the {replicas} replicas of "
            f"strategy={config.strategy!r}{where} (it is the global batch, "
            "split evenly over every device). "
            f"Received: batch_size={config.batch_size}"
        )
    set_mixed_precision(config.mixed_precision, distribution)
    return distribution


@dataclasses.dataclass
class RunData:
    """The data of a run, and the shapes the model is built for."""

    splits: object  # What `load_data` returned.
    steps_per_epoch: int
    image_shape: tuple
    num_classes: int
    validation: object  # Batched validation `tf.data.Dataset`, or None.
    imagenet: bool  # ImageNet's own batched pipeline (no exact resume).
    # `{"train": counts per class, "validation": ...}` (None for ImageNet).
    label_counts: dict = None


def prepare_data(config, distribution=None):
    """Loads the data; the steps per epoch, image shape and validation set.

    The validation set comes in global batches, this process's `shard` of
    each (`validation_batches`) for a `distribution` over several devices.

    Raises:
        ValueError: fewer training examples than one batch.
    """
    from keras_pcl.training.distribution import Distribution

    distribution = distribution or Distribution(config.strategy, 1)
    splits = load_data(config)
    imagenet = config.dataset == "imagenet2012"
    validation = splits.validation
    if imagenet:
        steps_per_epoch = int(splits.train.cardinality())
        if validation is not None and distribution.num_replicas > 1:
            validation = validation.unbatch()  # Re-batched evenly below.
        else:
            distribution = None  # The loader's own batches.
    else:
        steps_per_epoch = splits.num_train // config.batch_size
    if validation is not None and distribution is not None:
        validation = validation_batches(validation, config.batch_size, distribution)
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"The training split has fewer than one batch of {config.batch_size} "
            "examples. Lower `batch_size` or use more data. "
            f"Received: batch_size={config.batch_size}"
        )
    check_steps_per_execution(config.steps_per_execution, steps_per_epoch)
    images_spec = splits.train.element_spec[0]
    if isinstance(images_spec, tuple):  # Host-side views.
        images_spec = images_spec[0]
    label_counts = check_training_data(splits, imagenet)
    return RunData(
        splits=splits,
        steps_per_epoch=steps_per_epoch,
        image_shape=tuple(images_spec.shape[-3:]),
        num_classes=len(splits.class_names),
        validation=validation,
        imagenet=imagenet,
        label_counts=label_counts,
    )


def check_steps_per_execution(steps_per_execution, steps_per_epoch):
    """Raises unless `steps_per_execution` divides the steps of an epoch.

    Keras (3.15) runs whole executions: when `steps_per_execution` does not
    divide `steps_per_epoch`, the last execution of an epoch takes its
    missing batches from the next epoch, so every epoch after the first
    trains on other batches than the user asked for (measured on JAX: the
    epoch losses changed, with only Keras' "ran out of data" warning).

    Args:
        steps_per_execution: int >= 1, `compile`'s argument.
        steps_per_epoch: int >= 1, the training steps of one epoch.

    Raises:
        ValueError: naming both numbers and the nearest values that divide.

    Example:

    >>> check_steps_per_execution(27, 351)
    >>> check_steps_per_execution(64, 351)
    Traceback (most recent call last):
    ...
    ValueError: `steps_per_execution` must divide the 351 training steps of an epoch ...
    """
    if steps_per_execution <= 1 or steps_per_epoch % steps_per_execution == 0:
        return
    divisors = [d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0]
    below = max(d for d in divisors if d < steps_per_execution)
    above = [d for d in divisors if d > steps_per_execution]
    choices = [below] + above[:1]
    raise ValueError(
        f"`steps_per_execution` must divide the {steps_per_epoch} training "
        "steps of an epoch: otherwise the last execution of every epoch runs "
        "into the next epoch's batches and the run trains on other data than "
        f"asked for. Pass one of {choices} (divisors of {steps_per_epoch}), "
        "or set `steps_per_epoch` to a multiple of it. Received: "
        f"steps_per_execution={steps_per_execution}"
    )


def check_split(config):
    """Raises for a `config.split_at` the backbone lacks, before data loads.

    The model cuts the backbone only once the data has given the image
    shape; an image folder is decoded by then. So the split is checked
    first on the backbone built at a nominal shape (`config.image_size`, or
    224x224 for a keras.applications backbone, 32x32 for the others; the
    layer names do not depend on it), without weights. Nothing to build for
    a built-in backbone at its `default_split_at` or a method without a
    shared trunk (the method's own error then comes without a build).

    Raises:
        ValueError: as `keras_pcl.multi_branch.resolve_split`.
    """
    from keras_pcl.backbones import is_application
    from keras_pcl.multi_branch import resolve_split

    cls = methods.method_class(config.method)
    application = is_application(config.backbone)
    if not cls.shares_trunk:
        resolve_split(None, config.split_at, cls.__name__, shares_trunk=False)
        return
    if config.split_at is None and not application:
        return  # The built-in backbones' `default_split_at`.
    if config.image_size:
        size = tuple(config.image_size)
    else:
        size = (224, 224) if application else (32, 32)
    kwargs = dict(input_shape=size + (3,))
    if application:
        kwargs.update(weights=None, alpha=config.backbone_alpha)
    backbone = build_backbone_fn(config.backbone)(**kwargs)
    resolve_split(backbone, config.split_at, cls.__name__, verbose=False)


def check_training_data(splits, imagenet=False):
    """Checks the labels and the pixel scale of the loaded splits.

    The datasets come from `load_data` in memory (not ImageNet's pipeline
    of records, of which only the first batch is looked at): one pass over
    the labels counts the examples of each class and raises for an id
    outside `[0, num_classes)` (inside the compiled step it would be an
    error from deep inside the backend, or on JAX silently a zero target);
    the first images are checked by `keras_pcl.views.check_images` (a
    `PixelScaleWarning` for floats in [0, 1]). Before training, never per
    step.

    Returns:
        `{"train": counts, "validation": counts or None}`, NumPy arrays of
        examples per class; None for ImageNet.

    Raises:
        ValueError: a label out of range, naming the split and the id.
    """
    import numpy as np

    from keras_pcl.views import check_images

    num_classes = len(splits.class_names)
    if imagenet:
        images, _ = next(iter(splits.train.take(1)))
        check_images(_first_view(images).numpy(), "the training images")
        return None
    counts = {}
    for name, dataset in (("train", splits.train), ("validation", splits.validation)):
        if dataset is None:
            counts[name] = None
            continue
        labels = np.concatenate(
            [np.reshape(y, -1) for y in dataset.map(lambda x, y: y).batch(4096)]
            or [np.zeros((0,), "int64")]
        )
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(
                f"The {name} split has labels outside [0, {num_classes}) (its "
                f"{num_classes} classes): relabel the data so that label i "
                "is `class_names[i]`. Received: label "
                f"{labels[bad][0].item()!r} ({int(bad.sum())} of {labels.size})"
            )
        counts[name] = np.bincount(labels.astype("int64"), minlength=num_classes)
    first = next(iter(splits.train.take(64).batch(64)), None)
    if first is not None:
        check_images(_first_view(first[0]).numpy(), "the training images")
    return counts


def _first_view(images):
    return images[0] if isinstance(images, tuple) else images


def data_summary(config, run):
    """What `train` prints first: the data and the schedule of the run.

    Example of the text (an image folder):

        Data: 3 classes (cat 40, dog 38, fox 41 training images), 119
          training and 13 validation images; 2 files skipped (not images).
        Schedule: 30 epochs of 3 steps; consistency ramp-up over 8 epochs;
          learning rate / 10 at epochs 15, 22.5; mean-teacher decay 0.9.
    """
    splits = run.splits
    names = list(splits.class_names)
    counts = (run.label_counts or {}).get("train")
    if counts is not None:
        shown = [f"{n} {int(c)}" for n, c in zip(names, counts)][:10]
        more = f", ... {len(names) - 10} more" if len(names) > 10 else ""
        per_class = f" ({', '.join(shown)}{more} training images)"
    else:
        per_class = ""
    validation = f"{splits.num_validation}" if splits.validation is not None else "no"
    lines = [
        f"Data: {len(names)} classes{per_class}, {splits.num_train} training "
        f"and {validation} validation images"
    ]
    skipped = getattr(splits, "skipped_files", ())
    if skipped:
        lines[0] += (
            f"; {len(skipped)} file(s) skipped (could not be decoded), e.g. "
            f"{skipped[0]}"
        )
    schedule = run_schedule(config, run.steps_per_epoch)
    options = methods.method_options(config.method)
    steps = run.steps_per_epoch
    parts = [f"{config.epochs} epochs of {steps} step{'s' * (steps != 1)}"]
    if "rampup_steps" in options:
        parts.append(
            f"consistency ramp-up over {schedule.rampup_epochs:g} epochs "
            f"({schedule.rampup_steps} steps)"
        )
    drops = ", ".join(f"{e:g}" for e in schedule.lr_decay_epochs) or "none"
    parts.append(f"learning rate / 10 at epochs {drops}")
    if "ema_decay" in options:
        parts.append(f"mean-teacher decay {schedule.ema_decay:.4g}")
    lines.append("Schedule: " + "; ".join(parts))
    return "\n".join(line + "." for line in lines)


def build_backbone(config, image_shape):
    """`config.backbone` for `image_shape`, with the weight decay.

    A keras.applications backbone is built with `include_top=False,
    pooling="avg"` (and `config.backbone_alpha`); `config.backbone_weights`
    is then loaded (`"imagenet"`: Keras' download, at construction).

    Raises:
        FileNotFoundError: `config.backbone_weights` is not a file.
        ValueError: it holds the weights of another architecture.
    """
    from keras_pcl.backbones import applications
    from keras_pcl.backbones import is_application

    regularizer = None
    if config.weight_decay:
        # PyTorch's SGD `weight_decay` adds `wd * w` to the gradient, which is
        # the gradient of `wd / 2 * |w|^2`.
        regularizer = keras.regularizers.L2(config.weight_decay / 2)
    kwargs = dict(input_shape=image_shape, kernel_regularizer=regularizer)
    weights = config.backbone_weights
    if is_application(config.backbone):
        kwargs.update(
            weights="imagenet" if weights == "imagenet" else None,
            alpha=config.backbone_alpha,
        )
    backbone = build_backbone_fn(config.backbone)(**kwargs)
    if weights and weights != "imagenet":
        applications.load_backbone_weights(backbone, weights, config.backbone)
    return backbone


def model_preprocessing(config, backbone, splits):
    """The model's `preprocessing` layer for `backbone`, or None.

    * None for a backbone that begins with its own `Rescaling` or
      `Normalization` (EfficientNet, ConvNeXt, MobileNetV3, ...): it reads
      raw pixels, and the model adds nothing in front of it;
    * for the other keras.applications backbones, their family's
      `preprocess_input` as a layer (MobileNetV2: [0, 255] -> [-1, 1];
      ResNet50: BGR minus the ImageNet mean), the inputs their pretrained
      weights expect, with or without `backbone_weights`;
    * else the per-channel standardisation of the dataset (published
      CIFAR and ImageNet statistics, or measured on the training split).
    """
    from keras_pcl.backbones import applications
    from keras_pcl.backbones import is_application
    from keras_pcl.data import normalization_layer
    from keras_pcl.splitting import own_preprocessing

    if own_preprocessing(backbone) is not None:
        return None
    if is_application(config.backbone):
        layer = applications.application_preprocessing(config.backbone)
        if layer is not None:
            return layer
    return normalization_layer(preprocessing_statistics(config, splits))


def build_model(
    config,
    image_shape,
    num_classes,
    steps_per_epoch,
    preprocessing=None,
    backbone=None,
):
    """The uncompiled model of `config.method` around `config.backbone`.

    Every method gets the same settings through
    `keras_pcl.methods.build_method` (which leaves out those a method does
    not have): peers, augmentation, temperature, mean-teacher decay,
    consistency weight and its ramp-up, the mean-teacher decay (both from
    `run_schedule`: fractions of the run unless given, with a warning for
    an explicit value that does not fit the run),
    the split and how the peers start (`config.split_at`,
    `config.peer_initialization`, `config.peer_perturbation`).

    Args:
        config: a `TrainConfig`.
        image_shape: `(height, width, channels)` of the training images.
        num_classes: number of classes.
        steps_per_epoch: training steps per epoch (for the ramp-up).
        preprocessing: the model's preprocessing layer (None: the method's
            default, a rescaling to [0, 1], or nothing for a backbone with
            its own; see `model_preprocessing`).
        backbone: the backbone (default: `build_backbone(config,
            image_shape)`).
    """
    if backbone is None:
        backbone = build_backbone(config, image_shape)
    schedule = run_schedule(config, steps_per_epoch)
    options = methods.method_options(config.method)
    for name, option in (("rampup_epochs", "rampup_steps"), ("ema_decay", None)):
        if name in schedule.warnings and (option or name) in options:
            warnings.warn(schedule.warnings[name], stacklevel=2)
    return methods.build_method(
        config.method,
        backbone,
        num_classes,
        num_peers=config.num_peers,
        augmentation=in_model_augmentation(config, image_shape),
        preprocessing=preprocessing,
        temperature=config.temperature,
        ema_decay=schedule.ema_decay,
        consistency_weight=config.consistency_weight,
        rampup_steps=schedule.rampup_steps,
        split_at=config.split_at,
        peer_initialization=config.peer_initialization,
        peer_perturbation=config.peer_perturbation,
    )


def compile_model(model, config, steps_per_epoch):
    """The paper's optimiser: SGD with Nesterov momentum, step decay by 10.

    The drops are `run_schedule`'s: `config.lr_decay_fractions` of the run
    (the paper's epochs 150 and 225 of 300), or `config.lr_decay_epochs`
    (a drop at or after the last epoch warns); none of either (`()`) keeps
    the learning rate constant.
    """
    schedule = run_schedule(config, steps_per_epoch)
    if "lr_decay_epochs" in schedule.warnings:
        warnings.warn(schedule.warnings["lr_decay_epochs"], stacklevel=2)
    boundaries = list(schedule.lr_boundaries)
    learning_rate = config.lr  # No drop (`lr_decay_epochs=()`): constant.
    if boundaries:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [config.lr * 0.1**i for i in range(len(boundaries) + 1)]
        )
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate, momentum=config.momentum, nesterov=True
        ),
        jit_compile=JIT_COMPILE[config.jit_compile],
        steps_per_execution=config.steps_per_execution,
    )


def workdir_paths(config):
    """Where the run writes: backup, logs, best peer, final model, export."""
    from keras_pcl.export import FORMAT_EXTENSIONS

    suffix = FORMAT_EXTENSIONS.get(config.export_format, "")
    return {
        "backup": os.path.join(config.workdir, "backup"),
        "logs": os.path.join(config.workdir, "logs"),
        "best_peer": os.path.join(config.workdir, "best_peer.keras"),
        "model": os.path.join(config.workdir, f"{config.method}.keras"),
        "export": os.path.join(config.workdir, "export" + suffix),
    }


def job_callbacks(config, paths, backup, writer=True):
    """A stop on NaN, best-peer tracking, the backup and TensorBoard.

    `TerminateOnNonFinite` comes first: at a NaN or Inf loss or weight it
    raises before the best peer or the backup is written, so the last good
    ones survive.

    On processes other than 0 (`writer=False`), the best-peer record is
    kept (it is part of the model's state) but neither written nor
    printed, and there is no TensorBoard log.
    """
    tracker = _BestPeerTracker(
        filepath=paths["best_peer"] if writer else None,
        verbose=config.verbose if writer else 0,
    )
    logs = [keras.callbacks.TensorBoard(paths["logs"])] if writer else []
    # The stop on NaN first: it raises before a later callback saves.
    return [TerminateOnNonFinite(), tracker, backup, *logs]


class _BestPeerTracker(BestPeerTracker):
    """`BestPeerTracker` that copies the best peer outside the distribution.

    Process 0 alone writes the best peer; the copy's variables must then be
    its own, not placed on every process's devices (a collective that the
    other processes never join). The model's record is updated on every
    process, under its variables' own layouts.
    """

    def on_epoch_end(self, epoch, logs=None):
        with cluster.without_distribution():
            super().on_epoch_end(epoch, logs)


def fit(model, config, run, initial_step, callbacks, distribution=None):
    """Trains from `initial_step` to the last epoch; the merged `fit` logs.

    With several processes, each feeds its part of every global batch
    (`distribution.shard`); only process 0 prints.
    """
    from keras_pcl.training.distribution import Distribution

    distribution = distribution or Distribution(config.strategy, 1)
    if run.imagenet:
        # Reading ImageNet's records again up to the restored step would take
        # hours: a resumed run continues at the right step (weights,
        # schedule, ramp-up) with a freshly shuffled pipeline. Several
        # processes each decode every global batch and keep their part.
        stream = distribution.shard(run.splits.train.repeat())
    else:
        stream = training_stream(
            run.splits.train,
            config,
            run.steps_per_epoch,
            num_processes=distribution.num_processes,
            process_index=distribution.process_index,
        )
        stream = stream.skip(initial_step).prefetch(-1)
    history = {}
    batches = stream
    for initial_epoch, end_epoch, steps in fit_plan(
        initial_step, run.steps_per_epoch, config.epochs
    ):
        result = model.fit(
            batches,
            initial_epoch=initial_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            validation_data=run.validation,
            callbacks=callbacks,
            verbose=config.verbose if distribution.is_writer else 0,
            shuffle=False,  # Every epoch of the stream is shuffled already.
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        if model.stop_training:
            break
        if not run.imagenet:
            batches = stream.skip((end_epoch - initial_epoch) * steps)
    return history


def export_deployed_peer(model, config, path, write=True):
    """Exports the best peer (else `deploy_peer`) as `config.export_format`.

    `write=False` (processes other than 0): the same answer, nothing
    written or printed.

    Returns:
        `(peer index, reason)`; `(None, reason)` with `export_format="none"`.
        Without a best-peer record (no validation data), the model's
        `deploy_peer` is exported and a line says so (unless `verbose=0`).
    """
    from keras_pcl.deployment import resolve_peer

    if config.export_format == "none":
        return None, "export_format='none': nothing exported"
    if model.best_peer is not None:
        peer = "best"
        reason = (
            f"best validation accuracy (epoch {model.best_peer.epoch}), "
            "recorded by BestPeerTracker"
        )
    else:
        peer = "deploy"
        reason = (
            "no best peer was recorded, as the run had no validation data; "
            "the model's deploy_peer was exported"
        )
    index = resolve_peer(model, peer)
    if not write:
        return index, reason
    model.export_peer(path, peer=peer, format=config.export_format, overwrite=True)
    if peer == "deploy" and config.verbose:
        print(f"Exported peer {index} to {path}: {reason}.", flush=True)
    return index, reason
