"""`TrainConfig`, the recipes of the paper and the flags of the scripts.

Every field is declared once, with its default, its help text and (where it
has them) its choices, in the field's metadata. `TrainConfig`'s docstring,
`FIELD_HELP`, the absl flags of the example scripts (`define_flags`) and the
argparse flags of `keras-pcl train` are all read from there.

This module imports neither Keras nor TensorFlow until a config is
validated, so that `keras-pcl --help` starts quickly and quietly.
"""

import dataclasses
import textwrap

from keras_pcl import validation
from keras_pcl.methods import METHODS

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "tpu")
MIXED_PRECISION = ("none", "float16", "bfloat16")
# `TrainConfig.jit_compile` -> `Model.compile(jit_compile=...)`.
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def export_formats():
    """`keras_pcl.export.FORMATS` and `"none"`: the `export_format` choices.

    A function: `keras_pcl.export` imports Keras, which this module only
    does when asked.
    """
    from keras_pcl.export import FORMATS

    return FORMATS + ("none",)


def peer_initializations():
    """`keras_pcl.multi_branch.PEER_INITIALIZATIONS` (imports Keras on call)."""
    from keras_pcl.multi_branch import PEER_INITIALIZATIONS

    return PEER_INITIALIZATIONS


# The paper's CIFAR schedule as fractions of the run (spec section 7): the
# consistency ramp-up over 80 of 300 epochs, the learning rate divided by 10
# at epochs 150 and 225.
PAPER_RAMPUP_FRACTION = 80 / 300
PAPER_LR_DECAY_FRACTIONS = (0.5, 0.75)


def _field(default, help, choices=None, item_type=None):
    """A dataclass field whose metadata holds its help text and choices.

    Args:
        default: the default value.
        help: one or two sentences; the docstring and both flag parsers use
            them.
        choices: the allowed values (a tuple, or a function returning one
            when computing it would import Keras).
        item_type: for tuple fields, the type of one item.
    """
    metadata = {"help": help, "choices": choices, "item_type": item_type}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    dataset: str = _field(
        "cifar10",
        "`digits` (scikit-learn's, offline), `cifar10`, `cifar100` (tfds), "
        "`imagenet2012` (tfds, manual download), or the path of an image "
        "folder (one sub-folder per class).",
    )
    data_dir: str = _field(None, "tfds data folder (default: tfds' own).")
    download: bool = _field(
        False, "Let tfds download the dataset if it is missing (needs internet)."
    )
    method: str = _field(
        "pcl",
        "The method of `keras_pcl.methods.METHODS` to train: `pcl`, its "
        "ablations or a baseline.",
        choices=METHODS,
    )
    backbone: str = _field(
        "resnet32",
        "A name of `keras_pcl.backbones.names()`, `resnetD` for any CIFAR "
        "ResNet depth D = 6n + 2 (e.g. `resnet8`), or a keras.applications "
        "name (`MobileNetV2`, `EfficientNetB0`, `ResNet50`, ...: built with "
        "include_top=False, pooling='avg' at the images' size, and their "
        "family's `preprocess_input` scaling).",
    )
    backbone_weights: str = _field(
        None,
        "Weights to start the backbone from: a `.weights.h5` file of the same "
        "architecture (`backbone.save_weights(...)`), or `imagenet` for a "
        "keras.applications backbone (Keras downloads them). None: random.",
    )
    backbone_alpha: float = _field(
        None,
        "Width multiplier `alpha` of the keras.applications MobileNet "
        "families (None: their default, 1.0).",
    )
    split_at: str = _field(
        None,
        "Layer that ends the shared trunk (None: the backbone's default, or "
        "`keras_pcl.splitting.recommended_split` for keras.applications).",
    )
    peer_initialization: str = _field(
        "fresh",
        "`fresh`: every peer its own random initialisation (the paper); "
        "`backbone`: every peer (and mean teacher) starts from the backbone's "
        "weights, for fine-tuning with --backbone_weights (the classifiers "
        "are fresh).",
        choices=peer_initializations,
    )
    peer_perturbation: float = _field(
        0.0,
        "With peer_initialization=backbone: Gaussian noise added to each "
        "peer's kernels, relative to the kernel's std, so that the peers "
        "differ (0: identical copies).",
    )
    num_peers: int = _field(3, "Peers m (branches or networks of a baseline).")
    epochs: int = _field(300, "Training epochs.")
    batch_size: int = _field(
        128, "Global batch size (split over replicas, and over processes)."
    )
    lr: float = _field(0.1, "Initial learning rate.")
    lr_decay_fractions: tuple = _field(
        PAPER_LR_DECAY_FRACTIONS,
        "Where the learning rate is divided by 10, as fractions of `epochs` "
        "(the paper: epochs 150 and 225 of 300); a shorter run drops it "
        "proportionally sooner.",
        item_type=float,
    )
    lr_decay_epochs: tuple = _field(
        None,
        "Epochs (fractions of an epoch allowed) at which the learning rate is "
        "divided by 10, overriding `lr_decay_fractions`; an epoch >= "
        "`epochs` warns (that drop never happens). None: "
        "`lr_decay_fractions` of `epochs`.",
        item_type=float,
    )
    momentum: float = _field(0.9, "SGD Nesterov momentum.")
    weight_decay: float = _field(
        5e-4,
        "L2 weight decay of the convolution and dense kernels, as "
        "`kernel_regularizer=L2(weight_decay / 2)` (PyTorch's SGD "
        "`weight_decay` semantics).",
    )
    temperature: float = _field(
        3.0,
        "Distillation temperature T (None: the method's own default, e.g. 4 for KDCL).",
    )
    ema_decay: float = _field(
        None,
        "Mean-teacher EMA decay alpha, which averages over about "
        "1 / (1 - alpha) steps. None: the paper's 0.999, lowered for a run "
        "too short for it, so that the mean teacher averages over at most a "
        "tenth of the run's steps (`keras_pcl.mean_teacher.ema_decay_for_run`"
        "). An explicit value that averages over more warns.",
    )
    consistency_weight: float = _field(
        1.0, "Weight lambda that the distillation terms ramp up to."
    )
    rampup_fraction: float = _field(
        PAPER_RAMPUP_FRACTION,
        "Consistency ramp-up length as a fraction of `epochs` (the paper: "
        "80 of 300 epochs, 0.2667); a shorter run ramps up proportionally "
        "sooner.",
    )
    rampup_epochs: float = _field(
        None,
        "Consistency ramp-up length in epochs, overriding `rampup_fraction`; "
        "a length beyond `epochs` warns (distillation would never reach its "
        "full weight). None: `rampup_fraction` of `epochs`.",
    )
    validation_split: float = _field(
        0.1,
        "Fraction of each class held out from the training set for validation "
        "(model selection never touches a test split). 0: none, except for "
        "ImageNet, where 0 means the official validation split.",
    )
    train_images: int = _field(
        0,
        "Train on a class-balanced subset of this many images of the "
        "training split (as many of every class as can be, the first classes "
        "taking one more when it does not divide; drawn with `seed`); the "
        "validation split is untouched. 0: every training image. Digits, "
        "CIFAR and image folders (not ImageNet).",
    )
    host_augmentation: bool = _field(
        False,
        "Augment on the host (tf.data, one view per peer) instead of inside "
        "the training step.",
    )
    image_size: tuple = _field(
        None,
        "Image folders: resize every image to HEIGHT,WIDTH (None: all images "
        "must already share one size); digits: the upsampled size (default "
        "32).",
        item_type=int,
    )
    seed: int = _field(
        0, "Seeds the split, the shuffle, the initialisation and the augmentation."
    )
    deterministic: bool = _field(
        False, "Enable op determinism (exactly reproducible and resumable; slower)."
    )
    strategy: str = _field(
        "auto",
        "Distribution: `auto`, `cpu`, `gpu`, `mirrored` (all local GPUs) or "
        "`tpu`; with several processes (JAX), every device of every process.",
        choices=STRATEGIES,
    )
    coordinator_address: str = _field(
        None,
        "Several processes (JAX): HOST:PORT of process 0, the same on every "
        "process (e.g. `10.0.0.1:1234`), or `auto` to let JAX find the "
        "cluster (Cloud TPU pod slices, SLURM, Open MPI). None: "
        "KERAS_DISTRIBUTION_JOB_ADDRESSES, else a single process.",
    )
    num_processes: int = _field(
        None,
        "Several processes: how many (the same on every process). None: "
        "KERAS_DISTRIBUTION_NUM_PROCESSES, else 1 (or found with "
        "coordinator_address=auto).",
    )
    process_id: int = _field(
        None,
        "Several processes: this process's id in [0, num_processes); 0 "
        "writes the workdir. None: KERAS_DISTRIBUTION_PROCESS_ID, else 0 "
        "(or found with coordinator_address=auto).",
    )
    mixed_precision: str = _field(
        "none",
        "`none`, `float16` (GPUs) or `bfloat16` (TPUs, recent GPUs).",
        choices=MIXED_PRECISION,
    )
    jit_compile: str = _field(
        "auto", "XLA: `auto`, `true` or `false`.", choices=tuple(JIT_COMPILE)
    )
    steps_per_execution: int = _field(
        1, "Training steps per compiled call (TPU: 32 or more)."
    )
    workdir: str = _field(
        "pcl_workdir",
        "Where backups, TensorBoard logs, the best peer, the final model and "
        "the export go. Several hosts: a folder on a file system they share "
        "(process 0 writes, every process resumes from it).",
    )
    save_freq: int = _field(
        500,
        "Back up every this many steps and at the end of every epoch (0: at "
        "the end of every epoch only).",
    )
    export_format: str = _field(
        "tf_saved_model",
        "Format of the exported best peer (`keras_pcl.export.FORMATS`), or `none`.",
        choices=export_formats,
    )
    steps_per_epoch: int = _field(
        None,
        "Cap on the steps per epoch (smoke tests: each epoch then sees the "
        "first batches of its shuffle).",
    )
    verbose: int = _field(1, "Keras `fit` verbosity (0, 1 or 2).")

    def validate(self):
        """Raises a `ValueError` naming the first bad field."""
        for field in dataclasses.fields(self):
            choices = field_choices(field)
            if choices:
                validation.check_choice(field.name, getattr(self, field.name), choices)
        validation.check_int("num_peers", self.num_peers, minimum=2)
        for name in ("epochs", "batch_size", "steps_per_execution"):
            validation.check_int(name, getattr(self, name), minimum=1)
        validation.check_int("save_freq", self.save_freq, minimum=0)
        from keras_pcl.training.data import check_train_images

        check_train_images(self)
        if self.steps_per_epoch is not None:
            validation.check_int("steps_per_epoch", self.steps_per_epoch, minimum=1)
        validation.check_number(
            "validation_split",
            self.validation_split,
            "a fraction in [0, 1)",
            lambda v: 0 <= v < 1,
        )
        validation.check_number("lr", self.lr, "a positive number", lambda v: v > 0)
        validation.check_number(
            "weight_decay", self.weight_decay, "a number >= 0", lambda v: v >= 0
        )
        self._validate_schedule()
        if self.temperature is not None:
            validation.check_number(
                "temperature",
                self.temperature,
                "a positive number or None",
                lambda v: v > 0,
            )
        if self.host_augmentation:
            from keras_pcl.methods import method_options

            validation.check(
                "num_peers" in method_options(self.method),
                "host_augmentation",
                self.host_augmentation,
                f"False for method={self.method!r} (one network: the host "
                "draws one view per peer)",
            )
        from keras_pcl.training.cluster import cluster_from_config

        cluster_from_config(self)  # Raises for a partial or inconsistent one.
        build_backbone_fn(self.backbone)  # Raises for an unknown name.
        self._validate_backbone_options()

    def _validate_schedule(self):
        validation.check_number(
            "rampup_fraction",
            self.rampup_fraction,
            "a fraction of the run in [0, 1]",
            lambda v: 0 <= v <= 1,
        )
        if self.rampup_epochs is not None:
            validation.check_number(
                "rampup_epochs",
                self.rampup_epochs,
                "a number >= 0, or None for `rampup_fraction` of `epochs`",
                lambda v: v >= 0,
            )
        validation.check(
            isinstance(self.lr_decay_fractions, tuple)
            and all(0 <= f < 1 for f in self.lr_decay_fractions),
            "lr_decay_fractions",
            self.lr_decay_fractions,
            "a tuple of fractions of the run in [0, 1)",
        )
        if self.lr_decay_epochs is not None:
            validation.check(
                isinstance(self.lr_decay_epochs, tuple)
                and all(e >= 0 for e in self.lr_decay_epochs),
                "lr_decay_epochs",
                self.lr_decay_epochs,
                "a tuple of epochs >= 0, or None for `lr_decay_fractions` of `epochs`",
            )
        if self.ema_decay is not None:
            validation.check_number(
                "ema_decay",
                self.ema_decay,
                "a number in [0, 1), or None for the run's default",
                lambda v: 0 <= v < 1,
            )

    def _validate_backbone_options(self):
        from keras_pcl.backbones import applications
        from keras_pcl.backbones import is_application

        application = is_application(self.backbone)
        if self.backbone_alpha is not None:
            validation.check(
                application and applications.takes_alpha(self.backbone),
                "backbone_alpha",
                self.backbone_alpha,
                "None unless the backbone is a keras.applications MobileNet "
                f"(backbone={self.backbone!r} has no `alpha`)",
            )
            validation.check_number(
                "backbone_alpha",
                self.backbone_alpha,
                "a positive number",
                lambda v: v > 0,
            )
        if self.backbone_weights == "imagenet":
            validation.check(
                application,
                "backbone_weights",
                self.backbone_weights,
                "the path of a weights file; 'imagenet' is for "
                f"keras.applications backbones only (backbone={self.backbone!r})",
            )
        validation.check_number(
            "peer_perturbation",
            self.peer_perturbation,
            "a number >= 0",
            lambda v: v >= 0,
        )
        validation.check(
            not self.peer_perturbation or self.peer_initialization == "backbone",
            "peer_perturbation",
            self.peer_perturbation,
            "0 unless peer_initialization='backbone' (fresh peers differ already)",
        )


def _docstring():
    lines = [
        "Everything `train` needs; the example scripts' flags map onto it.",
        "",
        "Each field's help text lives in its metadata (`FIELD_HELP`), which",
        "the flags of the scripts and of `keras-pcl train` show too.",
        "",
        "Args:",
    ]
    for field in dataclasses.fields(TrainConfig):
        lines += textwrap.wrap(
            field.metadata["help"],
            width=76,
            initial_indent=f"    {field.name}: ",
            subsequent_indent="        ",
        )
    return "\n".join(lines)


TrainConfig.__doc__ = _docstring()

FIELD_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def field_choices(field):
    """The allowed values of a `TrainConfig` field (a tuple), or None."""
    choices = field.metadata.get("choices")
    return choices() if callable(choices) else choices


def parse_tuple(field, items):
    """A tuple field's value from its comma-separated items (strings).

    Raises:
        ValueError: an item that is not of the field's item type.
    """
    item_type = field.metadata["item_type"]
    try:
        return tuple(item_type(v) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(
            f"`{field.name}` must be comma-separated {item_type.__name__}s. "
            f"Received: {field.name}={','.join(map(str, items))!r}"
        ) from None


def field_kind(field):
    """The Python type (`bool`, `int`, `float`, `str` or `tuple`) of a field."""
    kinds = {t: t for t in (bool, int, float, str, tuple)}
    kinds.update({t.__name__: t for t in (bool, int, float, str, tuple)})
    return kinds.get(field.type, str)


def define_flags(flag_values=None, defaults=None):
    """Defines one absl flag per `TrainConfig` field (the example scripts').

    Args:
        flag_values: the absl `FlagValues` (default: `absl.flags.FLAGS`).
        defaults: a `TrainConfig` whose values become the flags' defaults.
    """
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    defaults = defaults or TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(defaults, field.name)
        help = field.metadata["help"]
        choices = field_choices(field)
        kind = field_kind(field)
        if choices:
            flags.DEFINE_enum(
                field.name, value, list(choices), help, flag_values=flag_values
            )
        elif kind is tuple:
            default = None if value is None else [str(v) for v in value]
            flags.DEFINE_list(field.name, default, help, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(field.name, value, help, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, value, help, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, value, help, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, value, help, flag_values=flag_values)


def config_from_flags(flag_values=None):
    """The `TrainConfig` that the parsed flags of `define_flags` describe."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = flag_values[field.name].value
        if field_kind(field) is tuple and value is not None:
            value = parse_tuple(field, value)
        values[field.name] = value
    return TrainConfig(**values)


def cifar_config(**overrides):
    """The paper's CIFAR recipe (spec section 7), with `overrides` applied."""
    return TrainConfig(**overrides)


def imagenet_config(**overrides):
    """The paper's ImageNet recipe: ResNet-18, 90 epochs, batch 256, wd 1e-4.

    The schedule is the paper's as fractions of the run: a ramp-up over 20
    of the 90 epochs, the learning rate divided by 10 at epochs 30 and 60
    (of a shorter `epochs`, proportionally sooner).
    """
    config = dict(
        dataset="imagenet2012",
        backbone="resnet18",
        epochs=90,
        batch_size=256,
        lr_decay_fractions=(30 / 90, 60 / 90),
        weight_decay=1e-4,
        rampup_fraction=20 / 90,
        validation_split=0.0,
        save_freq=2000,
    )
    config.update(overrides)
    return TrainConfig(**config)


def finetune_config(**overrides):
    """Fine-tuning a pretrained keras.applications backbone on an image folder.

    MobileNetV2 at 224x224, every peer starting from the backbone's weights
    (`backbone_weights`: a `.weights.h5` file, or `"imagenet"`), a learning
    rate of 0.01 (a tenth of the paper's, so as not to wash the pretrained
    features out) for 30 epochs, divided by 10 at epochs 20 and 25, weight
    decay 1e-4, a 5-epoch ramp-up, batch 64 (the schedule as fractions of
    the run: of a shorter `epochs`, proportionally sooner).
    """
    config = dict(
        backbone="MobileNetV2",
        image_size=(224, 224),
        peer_initialization="backbone",
        epochs=30,
        batch_size=64,
        lr=0.01,
        lr_decay_fractions=(20 / 30, 25 / 30),
        weight_decay=1e-4,
        rampup_fraction=5 / 30,
    )
    config.update(overrides)
    return TrainConfig(**config)


def build_backbone_fn(name):
    """A function `(**kwargs) -> backbone` for a name of `TrainConfig.backbone`.

    `keras_pcl.backbones.builder(name)`, which resolves every backbone name
    (built-in, `resnetD`, keras.applications), with errors naming
    `backbone`.
    """
    from keras_pcl import backbones

    return backbones.builder(name, argument="backbone")


def epochs_of_run(fraction, epochs):
    """`fraction` of a run of `epochs` epochs, in epochs.

    The one conversion of the schedule's fractions (`TrainConfig`'s
    `rampup_fraction` and `lr_decay_fractions`, and the scripts that scale
    a schedule with `--epochs`). Rounded to 9 decimals, so that the paper's
    fractions give its whole epochs exactly (`80 / 300 * 300` is
    80.00000000000001 in floating point).

    Example:

    >>> epochs_of_run(80 / 300, 300), epochs_of_run(80 / 300, 30)
    (80.0, 8.0)
    """
    return round(fraction * epochs, 9)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The schedule of one run, in epochs and in optimizer steps.

    Attributes:
        rampup_epochs: the consistency ramp-up length.
        lr_decay_epochs: where the learning rate is divided by 10.
        rampup_steps: `rampup_epochs` in steps (rounded).
        lr_boundaries: `lr_decay_epochs` in steps (rounded down), the
            boundaries of `PiecewiseConstantDecay`.
        ema_decay: the mean-teacher decay.
        total_steps: the steps of the whole run.
        warnings: `{field: message}` for explicit values that do not fit the
            run (see `run_schedule`).
    """

    rampup_epochs: float
    lr_decay_epochs: tuple
    rampup_steps: int
    lr_boundaries: tuple
    ema_decay: float
    total_steps: int
    warnings: dict


def run_schedule(config, steps_per_epoch):
    """The ramp-up, learning-rate drops and EMA decay of `config`'s run.

    Every length defaults to a fraction of the run (`rampup_fraction`,
    `lr_decay_fractions`; the EMA decay from
    `keras_pcl.mean_teacher.ema_decay_for_run`), so that a short run gets a
    proportionally short schedule; the paper's recipe (300 epochs) gives
    the paper's numbers exactly: a ramp-up over 80 epochs, drops at epochs
    150 and 225, decay 0.999. An explicit `rampup_epochs`, `lr_decay_epochs`
    or `ema_decay` is kept as given; one that does not fit the run gets a
    message in `Schedule.warnings` (a ramp-up longer than the run, a drop
    at or after its last epoch, a decay that averages over more than a
    tenth of its steps), which `build_model` and `compile_model` warn with.

    Args:
        config: a `TrainConfig`.
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        A `Schedule`.
    """
    from keras_pcl import mean_teacher

    epochs = config.epochs
    total_steps = epochs * steps_per_epoch
    warnings = {}
    rampup_epochs = config.rampup_epochs
    if rampup_epochs is None:
        rampup_epochs = epochs_of_run(config.rampup_fraction, epochs)
    elif rampup_epochs > epochs:
        warnings["rampup_epochs"] = (
            f"`rampup_epochs={rampup_epochs:g}` is longer than the run "
            f"(epochs={epochs}): the distillation terms never reach their "
            f"full weight (at the last step w(t) is "
            f"{_rampup_weight(epochs, rampup_epochs):.3g} of it). Leave "
            "`rampup_epochs` unset (None) for `rampup_fraction` of the run "
            f"({epochs_of_run(config.rampup_fraction, epochs):g} epochs here), "
            "or pass a value <= epochs."
        )
    lr_decay_epochs = config.lr_decay_epochs
    if lr_decay_epochs is None:
        lr_decay_epochs = tuple(
            epochs_of_run(f, epochs) for f in config.lr_decay_fractions
        )
    elif any(e >= epochs for e in lr_decay_epochs):
        late = [e for e in lr_decay_epochs if e >= epochs]
        default = [epochs_of_run(f, epochs) for f in config.lr_decay_fractions]
        warnings["lr_decay_epochs"] = (
            f"`lr_decay_epochs={','.join(f'{e:g}' for e in lr_decay_epochs)}` "
            f"has drops at or after the last epoch (epochs={epochs}): "
            f"{', '.join(f'{e:g}' for e in late)} never happen. Leave "
            "`lr_decay_epochs` unset (None) for `lr_decay_fractions` of the "
            f"run (epochs {', '.join(f'{e:g}' for e in default)} here), or "
            f"pass drops before epoch {epochs}."
        )
    ema_decay = config.ema_decay
    if ema_decay is None:
        ema_decay = mean_teacher.ema_decay_for_run(total_steps)
    else:
        message = mean_teacher.ema_decay_warning(ema_decay, total_steps, "ema_decay")
        if message:
            warnings["ema_decay"] = message
    return Schedule(
        rampup_epochs=rampup_epochs,
        lr_decay_epochs=tuple(lr_decay_epochs),
        rampup_steps=int(round(rampup_epochs * steps_per_epoch)),
        # Rounded down, as always; first rounded to 6 decimals, so that a
        # fraction's rounding error (1/3 of 90 epochs of 300 steps is
        # 9999.99999...) does not move a drop a step early.
        lr_boundaries=tuple(
            int(round(e * steps_per_epoch, 6)) for e in lr_decay_epochs
        ),
        ema_decay=ema_decay,
        total_steps=total_steps,
        warnings=warnings,
    )


def _rampup_weight(progress, length):
    """`w(t) / lambda` of the ramp-up at `progress` of `length` (NumPy-free)."""
    import math

    return math.exp(-5.0 * (1.0 - min(progress, length) / length) ** 2)
