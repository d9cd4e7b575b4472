"""The training recipe behind the example scripts and `keras-pcl train`.

`train(TrainConfig(...))` is the whole job: data, distribution, model, the
paper's optimiser and schedule, resumable `fit`, the best peer exported.
`cifar_config()` and `imagenet_config()` return the paper's recipes (spec
section 7); scripts override single fields.

Resuming after a crash: `keras.callbacks.BackupAndRestore` writes the model's
weights (students, mean teachers, step counter, best-peer record,
augmentation random states) and the optimizer's state every `save_freq`
steps. Keras then restarts an interrupted epoch from its first batch, which
would repeat the batches done before the crash; `train` instead reads the
restored step counter and feeds `fit` the training stream from the next
batch on (`Dataset.repeat().skip(step)`), finishing the interrupted epoch
with a first `fit` call of the remaining steps. With
`keras.utils.set_random_seed` and op determinism, a killed and resumed run
ends with the weights of an uninterrupted one (tested).
"""

import contextlib
import dataclasses
import json
import os
import re
import warnings

import keras

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "tpu")
MIXED_PRECISION = ("none", "float16", "bfloat16")


@dataclasses.dataclass
class TrainConfig:
    """Everything `train` needs; the example scripts' flags map onto it.

    Args:
        dataset: `"digits"` (scikit-learn's, offline), `"cifar10"`,
            `"cifar100"` (tfds), `"imagenet2012"` (tfds, manual download),
            or the path of an image folder (one sub-folder per class).
        data_dir: tfds data folder (default: tfds' own).
        download: let tfds download the dataset if it is missing.
        backbone: a name of `keras_pcl.backbones.names()`, or `resnetD`
            for any CIFAR ResNet depth `D = 6n + 2` (e.g. `resnet8`).
        num_peers: peers `m`.
        epochs: training epochs.
        batch_size: global batch size (split over replicas).
        lr: initial learning rate.
        lr_decay_epochs: epochs at which the learning rate is divided by 10.
        momentum: SGD Nesterov momentum.
        weight_decay: L2 weight decay of the convolution and dense kernels,
            as `kernel_regularizer=L2(weight_decay / 2)` (PyTorch's SGD
            `weight_decay` semantics).
        temperature, ema_decay, consistency_weight: PCL's `T`, `alpha`,
            `lambda`.
        rampup_epochs: consistency ramp-up length in epochs.
        validation_split: fraction of each class held out from the
            training set for validation (model selection never touches a
            test split). 0: none, except for ImageNet, where 0 means the
            official validation split.
        host_augmentation: augment on the host (`tf.data`, one view per
            peer) instead of inside the training step.
        image_size: image folders: resize every image to this size
            (None: all images must already share one size); digits: the
            upsampled size (default 32).
        seed: seeds the split, the shuffle, the initialisation and the
            augmentation.
        deterministic: enable op determinism (exact resume; slower).
        strategy: `"auto"`, `"cpu"`, `"gpu"`, `"mirrored"` or `"tpu"`.
        mixed_precision: `"none"`, `"float16"` or `"bfloat16"`.
        jit_compile: `"auto"`, `"true"` or `"false"`.
        steps_per_execution: steps per compiled call (TPU: 32 or more).
        workdir: where backups, TensorBoard logs, the best peer, the final
            model and the export go.
        save_freq: backup every this many steps (0: at the end of every
            epoch).
        export_format: format of the exported best peer
            (`keras_pcl.export.FORMATS`), or `"none"`.
        steps_per_epoch: cap the steps per epoch (smoke tests: each epoch
            then sees the first batches of its shuffle), or None.
        verbose: Keras `fit` verbosity.
    """

    dataset: str = "cifar10"
    data_dir: str = None
    download: bool = False
    backbone: str = "resnet32"
    num_peers: int = 3
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    lr_decay_epochs: tuple = (150, 225)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 3.0
    ema_decay: float = 0.999
    consistency_weight: float = 1.0
    rampup_epochs: float = 80.0
    validation_split: float = 0.1
    host_augmentation: bool = False
    image_size: tuple = None
    seed: int = 0
    deterministic: bool = False
    strategy: str = "auto"
    mixed_precision: str = "none"
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    workdir: str = "pcl_workdir"
    save_freq: int = 500
    export_format: str = "tf_saved_model"
    steps_per_epoch: int = None
    verbose: int = 1

    def validate(self):
        """Raises a `ValueError` naming the first bad field."""
        _check(
            self.strategy in STRATEGIES,
            "strategy",
            self.strategy,
            f"one of {list(STRATEGIES)}",
        )
        _check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            self.mixed_precision,
            f"one of {list(MIXED_PRECISION)}",
        )
        _check(
            self.jit_compile in ("auto", "true", "false"),
            "jit_compile",
            self.jit_compile,
            "'auto', 'true' or 'false'",
        )
        for name in ("num_peers", "epochs", "batch_size", "steps_per_execution"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, value, "an int >= 1")
        _check(self.num_peers >= 2, "num_peers", self.num_peers, "an int >= 2")
        _check(
            isinstance(self.save_freq, int) and self.save_freq >= 0,
            "save_freq",
            self.save_freq,
            "an int >= 0",
        )
        _check(
            0 <= self.validation_split < 1,
            "validation_split",
            self.validation_split,
            "a fraction in [0, 1)",
        )
        _check(self.lr > 0, "lr", self.lr, "a positive number")
        _check(
            self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0"
        )
        _check(
            self.rampup_epochs >= 0,
            "rampup_epochs",
            self.rampup_epochs,
            "a number >= 0",
        )
        from keras_pcl.export import FORMATS

        _check(
            self.export_format in FORMATS + ("none",),
            "export_format",
            self.export_format,
            f"one of {list(FORMATS + ('none',))}",
        )
        build_backbone_fn(self.backbone)  # Raises for an unknown name.


def define_flags(flag_values=None, defaults=None):
    """Defines one absl flag per `TrainConfig` field (the example scripts').

    Args:
        flag_values: the absl `FlagValues` (default: `absl.flags.FLAGS`).
        defaults: a `TrainConfig` whose values become the flags' defaults.
    """
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    defaults = defaults or TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(defaults, field.name)
        help = FIELD_HELP[field.name]
        if field.name == "strategy":
            flags.DEFINE_enum(
                field.name, value, STRATEGIES, help, flag_values=flag_values
            )
        elif field.name == "mixed_precision":
            flags.DEFINE_enum(
                field.name, value, MIXED_PRECISION, help, flag_values=flag_values
            )
        elif field.type in (tuple, "tuple"):
            default = None if value is None else [str(v) for v in value]
            flags.DEFINE_list(field.name, default, help, flag_values=flag_values)
        elif field.type in (bool, "bool"):
            flags.DEFINE_bool(field.name, value, help, flag_values=flag_values)
        elif field.type in (int, "int"):
            flags.DEFINE_integer(field.name, value, help, flag_values=flag_values)
        elif field.type in (float, "float"):
            flags.DEFINE_float(field.name, value, help, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, value, help, flag_values=flag_values)


def config_from_flags(flag_values=None):
    """The `TrainConfig` that the parsed flags of `define_flags` describe."""
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = flag_values[field.name].value
        if field.type in (tuple, "tuple") and value is not None:
            value = tuple(
                int(v) if field.name == "image_size" else float(v) for v in value
            )
        values[field.name] = value
    return TrainConfig(**values)


FIELD_HELP = {
    "dataset": "digits (offline), cifar10, cifar100, imagenet2012 (tfds) or the path of an image folder.",
    "data_dir": "tfds data folder (default: tfds' own).",
    "download": "Let tfds download the dataset if it is missing (needs internet).",
    "backbone": "A built-in backbone name (keras_pcl.backbones.names()) or resnetD, D = 6n + 2.",
    "num_peers": "Number of peers m.",
    "epochs": "Training epochs.",
    "batch_size": "Global batch size.",
    "lr": "Initial learning rate.",
    "lr_decay_epochs": "Epochs at which the learning rate is divided by 10.",
    "momentum": "SGD Nesterov momentum.",
    "weight_decay": "L2 weight decay (PyTorch SGD semantics), via kernel regularizers.",
    "temperature": "Distillation temperature T.",
    "ema_decay": "Mean-teacher EMA decay alpha.",
    "consistency_weight": "Weight lambda that the distillation terms ramp up to.",
    "rampup_epochs": "Consistency ramp-up length in epochs.",
    "validation_split": "Fraction of each class held out for validation.",
    "host_augmentation": "Augment on the host (tf.data, one view per peer) instead of in the step.",
    "image_size": "Image folders: resize to HEIGHT,WIDTH (default: keep, sizes must agree).",
    "seed": "Random seed (split, shuffle, initialisation, augmentation).",
    "deterministic": "Enable op determinism (exactly reproducible and resumable; slower).",
    "strategy": "Distribution: auto, cpu, gpu, mirrored (all local GPUs) or tpu.",
    "mixed_precision": "none, float16 (GPUs) or bfloat16 (TPUs, recent GPUs).",
    "jit_compile": "auto, true or false (XLA).",
    "steps_per_execution": "Training steps per compiled call (TPU: 32 or more).",
    "workdir": "Backups, TensorBoard logs, best peer, final model and export go here.",
    "save_freq": "Back up every this many steps (0: every epoch).",
    "export_format": "Format of the exported best peer: keras, tf_saved_model, onnx, tflite or none.",
    "steps_per_epoch": "Cap on the steps per epoch (smoke tests).",
    "verbose": "Keras fit verbosity (0, 1 or 2).",
}


def cifar_config(**overrides):
    """The paper's CIFAR recipe (spec section 7), with `overrides` applied."""
    return TrainConfig(**overrides)


def imagenet_config(**overrides):
    """The paper's ImageNet recipe: ResNet-18, 90 epochs, batch 256, wd 1e-4."""
    config = dict(
        dataset="imagenet2012",
        backbone="resnet18",
        epochs=90,
        batch_size=256,
        lr_decay_epochs=(30, 60),
        weight_decay=1e-4,
        rampup_epochs=20.0,
        validation_split=0.0,
        save_freq=2000,
    )
    config.update(overrides)
    return TrainConfig(**config)


def build_backbone_fn(name):
    """A function `(**kwargs) -> backbone` for a built-in name or `resnetD`."""
    from keras_pcl import backbones

    if name in backbones.names():
        return lambda **kwargs: backbones.get(name, **kwargs)
    match = re.fullmatch(r"resnet(\d+)", str(name))
    if match and (int(match.group(1)) - 2) % 6 == 0 and int(match.group(1)) >= 8:
        depth = int(match.group(1))
        return lambda **kwargs: backbones.CIFARResNet(depth=depth, **kwargs)
    raise ValueError(
        f"`backbone` must be one of {backbones.names()} or 'resnetD' with "
        f"D = 6n + 2 (e.g. 'resnet8'). Received: backbone={name!r}"
    )


# ----------------------------------------------------------------------
# Distribution and precision
# ----------------------------------------------------------------------


@dataclasses.dataclass
class Distribution:
    """Where training runs: a `scope()` to build the model in, and replicas."""

    name: str
    num_replicas: int
    strategy: object = None  # A `tf.distribute.Strategy` on TensorFlow.

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()


def make_distribution(name="auto"):
    """Sets up data-parallel training for the current backend.

    * TensorFlow: a `tf.distribute` strategy. `"auto"`: `MirroredStrategy`
      over all GPUs if there are several, else the default strategy;
      `"cpu"`/`"gpu"`: `OneDeviceStrategy`; `"mirrored"`:
      `MirroredStrategy`; `"tpu"`: `TPUStrategy` through
      `TPUClusterResolver` (Colab, Cloud TPU VMs).
    * JAX: `keras.distribution.DataParallel` over all devices when there are
      several (`"auto"`, `"mirrored"`, `"gpu"`, `"tpu"`); `"cpu"` uses one.
    * PyTorch: one device (`"auto"`, `"cpu"`, `"gpu"`); Keras' torch
      backend has no data-parallel `fit`.

    Args:
        name: one of `STRATEGIES`.

    Returns:
        A `Distribution`.

    Raises:
        ValueError: an unknown name, a strategy the backend does not have,
            or hardware that is not there (no TPU or GPU found).
    """
    _check(name in STRATEGIES, "strategy", name, f"one of {list(STRATEGIES)}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_distribution(name)
    if backend == "jax":
        return _jax_distribution(name)
    if name in ("mirrored", "tpu"):
        raise ValueError(
            f"`strategy={name!r}` is not available on the torch backend: "
            "Keras' torch `fit` trains on one device. Use "
            "KERAS_BACKEND=tensorflow or jax for multi-device training, or "
            f"strategy='auto'. Received: strategy={name!r}"
        )
    if name == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "`strategy='gpu'`, but torch finds no CUDA device. Use "
                "strategy='cpu' or 'auto'. Received: strategy='gpu'"
            )
    return Distribution(name, 1)


def _tensorflow_distribution(name):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError, RuntimeError) as error:
            raise ValueError(
                "`strategy='tpu'`, but no TPU was found "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                "On Colab pick a TPU runtime; elsewhere set TPU_NAME. "
                "Received: strategy='tpu'"
            ) from None
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "mirrored" or (name == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    elif name == "gpu":
        if not gpus:
            raise ValueError(
                "`strategy='gpu'`, but TensorFlow finds no GPU. Use "
                "strategy='cpu' or 'auto'. Received: strategy='gpu'"
            )
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    elif name == "cpu":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    else:
        strategy = tf.distribute.get_strategy()
    return Distribution(name, strategy.num_replicas_in_sync, strategy)


def _jax_distribution(name):
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    wanted = {"gpu": "gpu", "tpu": "tpu"}.get(name)
    if wanted and platform != wanted:
        raise ValueError(
            f"`strategy={name!r}`, but JAX runs on {platform} "
            f"({len(devices)} device(s)). Install the jax[{'cuda12' if wanted == 'gpu' else 'tpu'}] "
            f"build or pick strategy='auto'. Received: strategy={name!r}"
        )
    if name == "cpu" or len(devices) == 1:
        return Distribution(name, 1)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    return Distribution(name, len(devices))


def set_mixed_precision(mode, distribution):
    """Sets Keras' global dtype policy for `mode` ("none", "float16", "bfloat16").

    Warns when the hardware gains nothing from it: float16 on CPU or TPU
    (TPUs compute in bfloat16; CPUs emulate float16 slowly), bfloat16 on a
    CPU. Training stays correct: logits, losses and mean teachers are
    float32, and float16 gets Keras' loss scaling.
    """
    _check(
        mode in MIXED_PRECISION,
        "mixed_precision",
        mode,
        f"one of {list(MIXED_PRECISION)}",
    )
    if mode == "none":
        keras.mixed_precision.set_global_policy("float32")
        return
    device = _device_kind(distribution)
    if (mode == "float16" and device in ("cpu", "tpu")) or (
        mode == "bfloat16" and device == "cpu"
    ):
        warnings.warn(
            f"mixed_precision={mode!r} on {device.upper()}: training is "
            "correct but not faster (and may be slower); it pays off with "
            + (
                "float16 on GPUs."
                if device == "cpu" and mode == "float16"
                else "bfloat16 on TPUs or recent GPUs."
            ),
            stacklevel=2,
        )
    keras.mixed_precision.set_global_policy(f"mixed_{mode}")


def _device_kind(distribution):
    backend = keras.backend.backend()
    if distribution.name == "tpu":
        return "tpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------


def load_data(config):
    """`config.dataset` through its `keras_pcl.data` loader.

    CIFAR and image folders come unbatched and in a fixed order (decoded
    once, in memory): `training_stream` shuffles and batches them per
    epoch. ImageNet comes as the loader's own batched pipeline.
    """
    from keras_pcl import data

    common = dict(
        validation_split=config.validation_split or None,
        seed=config.seed,
        deterministic=True if config.deterministic else None,
    )
    if config.dataset == "imagenet2012":
        return data.imagenet2012(
            data_dir=config.data_dir,
            download=config.download,
            batch_size=config.batch_size,
            drop_remainder=True,
            num_views=config.num_peers if config.host_augmentation else None,
            **common,
        )
    unbatched = dict(batch_size=None, shuffle=False, **common)
    if config.dataset == "digits":
        size = config.image_size[0] if config.image_size else 32
        return data.digits(image_size=size, **unbatched)
    if config.dataset in ("cifar10", "cifar100"):
        loader = getattr(data, config.dataset)
        return loader(data_dir=config.data_dir, download=config.download, **unbatched)
    if os.path.isdir(config.dataset):
        return data.image_folder(
            config.dataset, image_size=config.image_size, **unbatched
        )
    raise ValueError(
        "`dataset` must be 'digits', 'cifar10', 'cifar100', 'imagenet2012' or the path "
        f"of an image folder (one sub-folder per class); no directory "
        f"{config.dataset!r} exists. Received: dataset={config.dataset!r}"
    )


def training_stream(examples, config, steps_per_epoch):
    """All training batches of all epochs, as a function of position only.

    Epoch `e` shuffles `examples` with a seed made of `config.seed` and `e`
    (and, with host augmentation, draws each view with a seed made of the
    epoch and the example's position), so `stream.skip(n)` in a new process
    yields exactly the batches an uninterrupted run trains on after step
    `n`. (A `shuffle(reshuffle_each_iteration=True)` pipeline depends on how
    often the dataset was iterated before, which a restart changes.)
    """
    import tensorflow as tf

    from keras_pcl import data

    num_examples = int(examples.cardinality())
    # The decoded examples are in memory already; as two tensors they can be
    # gathered in any order without iterating the dataset.
    images, labels = examples.batch(num_examples).get_single_element()
    view_fn = None
    if config.host_augmentation and config.dataset == "digits":  # No flips.
        from keras_pcl.data.digits import random_shift

        padding = max(1, int(examples.element_spec[0].shape[0]) // 8)
        view_fn = lambda image, seed: random_shift(image, seed, padding)  # noqa: E731
    elif config.host_augmentation:
        view_fn = data.view_function("default")
    batch_size = config.batch_size

    def epoch_batches(epoch):
        seed = tf.stack([tf.constant(config.seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seed=seed
        )
        indices = tf.data.Dataset.from_tensor_slices(order)
        if view_fn is None:
            return (
                indices.batch(batch_size, drop_remainder=True)
                .take(steps_per_epoch)
                .map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))
            )

        def views(position, i):
            image = tf.gather(images, i)
            return (
                tuple(
                    view_fn(
                        image, tf.stack([epoch, position * config.num_peers + j]) + seed
                    )
                    for j in range(config.num_peers)
                ),
                tf.gather(labels, i),
            )

        return (
            indices.take(steps_per_epoch * batch_size)
            .enumerate()
            .map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
        )

    return tf.data.Dataset.range(config.epochs).flat_map(epoch_batches)


def train(config, callbacks=()):
    """Trains PCL as `config` says, resuming from `config.workdir` if it can.

    Writes to `config.workdir`: `config.json` (a later run with another
    configuration refuses to resume), `backup/` (`BackupAndRestore`),
    `logs/` (TensorBoard), `best_peer.keras` (the best peer so far),
    `pcl.keras` (the final PCL model) and `export/` (the best peer in
    `config.export_format`).

    Args:
        config: a `TrainConfig`.
        callbacks: more Keras callbacks for `fit`, after PCL's own.

    Returns:
        A dict: `history` (merged `fit` logs), `best_peer`, `model`,
        `initial_step` (0, or the step a resumed run started from) and
        `paths`.

    Raises:
        ValueError: a bad field of `config`, a workdir written by another
            configuration, or a global batch that the replicas cannot
            split evenly.
    """
    import numpy as np

    import keras_pcl

    config.validate()
    os.makedirs(config.workdir, exist_ok=True)
    _check_workdir_config(config)
    if config.deterministic:
        keras.utils.set_random_seed(config.seed)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
    else:
        keras.utils.set_random_seed(config.seed)

    distribution = make_distribution(config.strategy)
    if config.batch_size % distribution.num_replicas:
        raise ValueError(
            f"`batch_size` must be divisible by the {distribution.num_replicas} "
            f"replicas of strategy={config.strategy!r} (it is the global "
            f"batch). Received: batch_size={config.batch_size}"
        )
    set_mixed_precision(config.mixed_precision, distribution)

    splits = load_data(config)
    imagenet = config.dataset == "imagenet2012"
    if imagenet:
        steps_per_epoch = int(splits.train.cardinality())
        images_spec = splits.train.element_spec[0]
        validation = splits.validation
    else:
        steps_per_epoch = splits.num_train // config.batch_size
        images_spec = splits.train.element_spec[0]
        validation = None
        if splits.validation is not None:
            validation = splits.validation.batch(config.batch_size).prefetch(-1)
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"The training split has fewer than one batch of {config.batch_size} "
            "examples. Lower `batch_size` or use more data. "
            f"Received: batch_size={config.batch_size}"
        )
    if isinstance(images_spec, tuple):  # Host-side views.
        images_spec = images_spec[0]
    image_shape = tuple(images_spec.shape[-3:])
    mean, std = _preprocessing_statistics(config, splits)

    with distribution.scope():
        backbone = build_backbone_fn(config.backbone)(
            input_shape=image_shape,
            kernel_regularizer=keras.regularizers.L2(config.weight_decay / 2)
            if config.weight_decay
            else None,
        )
        model = keras_pcl.PeerCollaborativeModel(
            backbone,
            num_classes=len(splits.class_names),
            num_peers=config.num_peers,
            augmentation=_in_model_augmentation(config, image_shape),
            preprocessing=keras_pcl.data.normalization_layer((mean, std)),
            temperature=config.temperature,
            ema_decay=config.ema_decay,
            consistency_weight=config.consistency_weight,
            rampup_steps=int(round(config.rampup_epochs * steps_per_epoch)),
        )
        boundaries = [int(e * steps_per_epoch) for e in config.lr_decay_epochs]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [config.lr * 0.1**i for i in range(len(boundaries) + 1)]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(
                schedule, momentum=config.momentum, nesterov=True
            ),
            jit_compile={"auto": "auto", "true": True, "false": False}[
                config.jit_compile
            ],
            steps_per_execution=config.steps_per_execution,
        )

    paths = {
        "backup": os.path.join(config.workdir, "backup"),
        "logs": os.path.join(config.workdir, "logs"),
        "best_peer": os.path.join(config.workdir, "best_peer.keras"),
        "model": os.path.join(config.workdir, "pcl.keras"),
        "export": os.path.join(
            config.workdir, "export" + _export_suffix(config.export_format)
        ),
    }
    backup = _RestoreOnceBackup(
        paths["backup"], save_freq=config.save_freq or "epoch", delete_checkpoint=False
    )
    # Restore now, through the callback's own hook, to know where the run
    # stands; the `fit` calls below then only save.
    backup.set_model(model)
    backup.on_train_begin()
    initial_step = int(keras.ops.convert_to_numpy(model.step_counter.value))
    callbacks = [
        keras_pcl.callbacks.BestPeerTracker(
            filepath=paths["best_peer"], verbose=config.verbose
        ),
        backup,
        keras.callbacks.TensorBoard(paths["logs"]),
        keras.callbacks.TerminateOnNaN(),
        *callbacks,
    ]

    if imagenet:
        # Reading ImageNet's records again up to the restored step would take
        # hours: a resumed run continues at the right step (weights,
        # schedule, ramp-up) with a freshly shuffled pipeline.
        stream = splits.train.repeat()
    else:
        stream = training_stream(splits.train, config, steps_per_epoch)
        stream = stream.skip(initial_step).prefetch(-1)
    total_steps = config.epochs * steps_per_epoch
    history = {}
    epoch, done_in_epoch = divmod(initial_step, steps_per_epoch)
    fits = []
    if initial_step < total_steps and done_in_epoch:
        fits.append((epoch, epoch + 1, steps_per_epoch - done_in_epoch))
        epoch += 1
    if epoch < config.epochs:
        fits.append((epoch, config.epochs, steps_per_epoch))
    iterator_data = stream
    for initial_epoch, end_epoch, steps in fits:
        result = model.fit(
            iterator_data,
            initial_epoch=initial_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=callbacks,
            verbose=config.verbose,
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        if model.stop_training:
            break
        iterator_data = (
            stream if imagenet else stream.skip((end_epoch - initial_epoch) * steps)
        )

    model.save(paths["model"])
    if config.export_format != "none":
        peer = "best" if model.best_peer is not None else "deploy"
        model.export_peer(
            paths["export"], peer=peer, format=config.export_format, overwrite=True
        )
    return {
        "history": history,
        "best_peer": model.best_peer,
        "model": model,
        "initial_step": initial_step,
        "paths": paths,
        "steps_per_epoch": steps_per_epoch,
        "final_step": int(
            np.asarray(keras.ops.convert_to_numpy(model.step_counter.value))
        ),
    }


class _RestoreOnceBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that restores at its first `on_train_begin` only.

    `train` calls that first one itself, before `fit`, and starts each `fit`
    at the right epoch and batch. A restore inside a later `fit` would roll
    back the steps of the previous one, and the epoch that the parent class
    sets on the model would override `fit`'s `initial_epoch`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored = False

    def on_train_begin(self, logs=None):
        if self._restored:
            return
        self._restored = True
        super().on_train_begin(logs)
        self.model._initial_epoch = None  # Set by the parent; `train` decides.


def _in_model_augmentation(config, image_shape):
    from keras_pcl import data

    if config.host_augmentation:
        return None
    if config.dataset == "digits":  # Digits must not be mirrored.
        return data.digits_augmentation(image_shape[0])
    return "default"


def _preprocessing_statistics(config, splits):
    from keras_pcl import data

    if config.dataset == "cifar10":
        return data.CIFAR10_MEAN, data.CIFAR10_STD
    if config.dataset == "cifar100":
        return data.CIFAR100_MEAN, data.CIFAR100_STD
    if config.dataset == "imagenet2012":
        return data.IMAGENET_MEAN, data.IMAGENET_STD
    return data.compute_mean_std(splits, max_examples=10000)


# Fields that may change between a run and its resumption.
_RESUMABLE_FIELDS = (
    "epochs",
    "verbose",
    "workdir",
    "export_format",
    "save_freq",
    "data_dir",
    "download",
)


def _check_workdir_config(config):
    path = os.path.join(config.workdir, "config.json")
    current = _jsonable(dataclasses.asdict(config))
    if os.path.exists(path) and os.path.isdir(os.path.join(config.workdir, "backup")):
        with open(path) as f:
            previous = json.load(f)
        changed = sorted(
            key
            for key in set(current) | set(previous)
            if key not in _RESUMABLE_FIELDS and current.get(key) != previous.get(key)
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
    with open(path, "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)


def _jsonable(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _export_suffix(format):
    return {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}.get(format, "")


def _check(ok, name, value, expected):
    if not ok:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
