"""The `keras-pcl` command line.

    keras-pcl train --dataset=digits --backbone=resnet8 --epochs=15 --workdir=runs/d
    keras-pcl train --method=dml --dataset=digits --workdir=runs/dml  # a baseline
    keras-pcl evaluate runs/d/pcl.keras --dataset=digits
    keras-pcl evaluate runs/f/export --dataset=path/to/test_folder --split=all
    keras-pcl export CHECKPOINT.keras OUTPUT [--peer best] [--format FORMAT]
    keras-pcl benchmark --methods=pcl,vanilla --backbone=resnet32 --batch_size=32
    keras-pcl compare --dataset=path/to/images --backbone=resnet8 --epochs=30

Each subcommand wraps a library call (`train` ->
`keras_pcl.training.train`, the job of the example scripts, with the same
flags; `evaluate` -> `keras_pcl.training.evaluation` on a split; `export` ->
`PeerCollaborativeModel.export_peer`; `benchmark` ->
`keras_pcl.benchmark.time_models` on the methods of `keras_pcl.methods`;
`compare` -> `keras_pcl.training.compare`, the plain network against PCL
at equal training cost).
Exit codes: 0 success, 1 an error (printed as one line, `keras-pcl
<command>: error: ...`), 2 bad usage. The Keras backend is the usual
`KERAS_BACKEND` (TensorFlow if unset); `tf_saved_model` and `tflite` need
TensorFlow (or JAX for SavedModel).

The command owns its process: its entry point (`keras_pcl_command.main`,
outside the package so that it runs before Keras is imported) hides
TensorFlow's native start-up lines (oneDNN, CUDA stubs, "All log messages
before absl::InitializeLog()"), which Keras triggers on every backend by
importing TensorFlow, and `TF_CPP_MIN_LOG_LEVEL` defaults to 3
(TensorFlow's native INFO, WARNING and ERROR lines off, such as "failed
call to cuInit" on a machine without a GPU; Python warnings and
keras-pcl's errors still show). A user who sets `TF_CPP_MIN_LOG_LEVEL`
(e.g. to 0) sees what TensorFlow prints at that level.
"""

import argparse
import dataclasses
import logging
import os
import sys

from keras_pcl import validation

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser():
    """The argument parser of all subcommands."""
    # allow_abbrev=False everywhere: `--epoch` must not pass for `--epochs`
    # (nor `--lr_decay` for `--lr_decay_epochs` next to `--lr_decay_fractions`).
    parser = argparse.ArgumentParser(
        prog="keras-pcl",
        description="Peer Collaborative Learning for Keras 3.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        allow_abbrev=False,
        help="train PCL or a baseline (--method) and export the best peer",
        description=(
            "Train PCL (or --method) with `keras_pcl.training.train`: the "
            "flags are the fields of `TrainConfig` (defaults: the paper's "
            "CIFAR recipe). Rerun the same command to resume from the backup "
            "in --workdir."
        ),
    )
    _add_config_arguments(train)
    train.set_defaults(run=run_train)

    compare = commands.add_parser(
        "compare",
        help="the plain network against PCL (--method) at equal training cost",
        description=(
            "Time a --method step against a plain step on this machine, train "
            "--method for --epochs and the plain network (backbone + "
            "classifier) for --epochs x that ratio, both with "
            "`keras_pcl.training.train` under --workdir, and print which "
            "deployed network is better on the validation split "
            "(`keras_pcl.training.equal_cost`). Rerun the same command to resume."
        ),
    )
    _add_config_arguments(compare)
    compare.add_argument(
        "--cost_ratio",
        type=float,
        default=None,
        help="A --method step's time over a plain step's; unset: measured "
        "here first (or read from <workdir>/compare.json when resuming).",
    )
    compare.add_argument(
        "--timing_steps",
        type=int,
        default=4,
        help="Steps per timed call of the step-cost measurement. Default: 4",
    )
    compare.set_defaults(run=run_compare)

    evaluate = commands.add_parser(
        "evaluate",
        allow_abbrev=False,
        help="top-1/top-5 accuracy of a network or checkpoint on a dataset split",
        description=(
            "Score a trained network on a dataset split: a .keras file (an "
            "exported network, or a PCL or baseline checkpoint: every peer, "
            "the ensemble and every mean teacher, then the peer that "
            "`train` exports), a SavedModel directory, a .onnx or a .tflite "
            "file. "
            "Reports top-1 accuracy, and top-5 with more than 5 classes. "
            "--split=validation (default) is the split held out in "
            "training: pass the --validation_split and --seed of training. "
            "--split=all scores every image of an image folder (your test "
            "folder); --split=test the tfds test split of cifar10/cifar100."
        ),
    )
    evaluate.add_argument(
        "network",
        help="a .keras file, a SavedModel directory, a .onnx or .tflite file",
    )
    from keras_pcl.training.evaluation import SPLITS

    evaluate.add_argument(
        "--split",
        default="validation",
        choices=SPLITS,
        help=(
            "validation: the split held out in training; all: every image "
            "of an image folder; test: the tfds test split (cifar10, "
            "cifar100). Default: validation"
        ),
    )
    evaluate.add_argument(
        "--confusion_matrix",
        default=None,
        metavar="PATH.png",
        help="also draw the confusion matrix there (needs matplotlib)",
    )
    for name in (
        "dataset",
        "data_dir",
        "image_size",
        "validation_split",
        "seed",
        "batch_size",
    ):
        _add_field_argument(evaluate, name)
    evaluate.set_defaults(run=run_evaluate)

    export = commands.add_parser(
        "export",
        allow_abbrev=False,
        help="export one peer of a trained PCL checkpoint for serving",
        description=(
            "Export one peer of a PCL model saved with `model.save(...)` (a "
            ".keras file, e.g. written by the example scripts) as a "
            "standalone network: preprocessing, trunk, one peer and its "
            "classifier. The serving formats take raw NHWC images (float32 "
            "in [0, 255]; the SavedModel also has a `serving_uint8` "
            "signature) and return `logits` and `probabilities`."
        ),
    )
    export.add_argument("checkpoint", help="the PCL model, a .keras file")
    export.add_argument(
        "output",
        help=(
            "where to write: a file ending in .keras, .onnx or .tflite "
            "(that format), or a directory (tf_saved_model)"
        ),
    )
    export.add_argument(
        "--peer",
        default="best",
        help=(
            "'best' (recorded by BestPeerTracker during training), 'deploy' "
            "(the model's deploy_peer) or a peer index. Default: best"
        ),
    )
    from keras_pcl.export import FORMATS

    export.add_argument(
        "--format",
        default=None,
        choices=FORMATS,
        help=(
            "artifact format; it must agree with OUTPUT's extension. "
            "Default: from the extension (.keras, .onnx, .tflite; else "
            "tf_saved_model, a directory)"
        ),
    )
    export.add_argument(
        "--student",
        action="store_true",
        help="export the student peer instead of its mean teacher",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUTPUT"
    )
    export.set_defaults(run=run_export)

    benchmark = commands.add_parser(
        "benchmark",
        allow_abbrev=False,
        help="training throughput of PCL and the baselines (images/s)",
        description=(
            "Time `fit` steps of each method on random uint8 images of the "
            "backbone's input size: one untimed warm-up call (compilation), "
            "then --repeats timed calls of --steps steps, methods "
            "alternating; prints the median images/s and each method's step "
            "time relative to vanilla's. Run on an otherwise idle machine."
        ),
    )
    from keras_pcl.methods import METHODS

    benchmark.add_argument(
        "--methods",
        default="pcl,vanilla",
        help=(
            f"comma-separated methods: {', '.join(METHODS)}, or 'all'. "
            "Default: pcl,vanilla"
        ),
    )
    _add_field_argument(benchmark, "backbone")
    benchmark.add_argument(
        "--image_size",
        type=int,
        default=0,
        help="image height and width; 0: 224 for resnet18, else 32. Default: 0",
    )
    benchmark.add_argument("--num_classes", type=int, default=10, help="Default: 10")
    benchmark.add_argument(
        "--num_peers",
        type=int,
        default=3,
        help="peers of every multi-branch method. Default: 3",
    )
    benchmark.add_argument("--batch_size", type=int, default=32, help="Default: 32")
    benchmark.add_argument(
        "--steps", type=int, default=4, help="training steps per timed call. Default: 4"
    )
    benchmark.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per method (median). Default: 3",
    )
    benchmark.set_defaults(run=run_benchmark)
    return parser


def run_benchmark(args):
    """`keras-pcl benchmark`: `time_models` on the chosen methods."""
    import keras

    from keras_pcl import benchmark
    from keras_pcl import methods
    from keras_pcl import process
    from keras_pcl import training

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if names == ["all"]:
        names = list(methods.METHODS)
    minimums = {
        "batch_size": 1,
        "steps": 1,
        "repeats": 1,
        "num_classes": 2,
        "num_peers": 2,
        "image_size": 0,
    }
    try:
        for name, minimum in minimums.items():
            validation.check_int(f"--{name}", getattr(args, name), minimum=minimum)
        for name in names:
            methods.check_method(name)
        make_backbone = training.build_backbone_fn(args.backbone)
    except ValueError as error:
        raise CommandError(_first_line(error)) from None
    configure_process(
        max((process.parallel_branches(n, args.num_peers) for n in names), default=1)
    )
    size = args.image_size or (224 if args.backbone == "resnet18" else 32)
    shape = (size, size, 3)
    models = {}
    for name in names:
        model = methods.build_method(
            name,
            make_backbone(input_shape=shape),
            args.num_classes,
            num_peers=args.num_peers,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
        models[name] = model
    x, y = benchmark.random_images(
        max(args.steps, 2) * args.batch_size, shape, args.num_classes
    )
    print(
        f"Timing {', '.join(names)} on {args.backbone} ({size}x{size}), batch "
        f"{args.batch_size}, {keras.backend.backend()} backend:"
    )
    progress = keras.utils.Progbar(
        len(models) * (args.repeats + 1), unit_name="fit call"
    )
    results = benchmark.time_models(
        models,
        x,
        y,
        args.batch_size,
        args.steps,
        args.repeats,
        warmup_steps=2,
        progress=progress,
    )
    print(f"{'method':<26}{'images/s':>10}{'step s':>9}{'x vanilla':>11}")
    for name, r in results.items():
        ratio = f"{r['ratio_to_vanilla']:.2f}" if "ratio_to_vanilla" in r else "-"
        print(
            f"{name:<26}{r['images_per_sec']:>10.1f}{r['step_seconds']:>9.3f}{ratio:>11}"
        )


def run_export(args):
    """`keras-pcl export`: loads the checkpoint and calls `export_peer`."""
    from keras_pcl.export import format_for_path

    try:  # Before the checkpoint loads: a wrong extension fails fast.
        args.format = format_for_path(args.output, args.format)
    except ValueError as error:
        raise CommandError(_first_line(error)) from None
    if not os.path.isfile(args.checkpoint):
        raise CommandError(
            f"checkpoint {args.checkpoint!r} does not exist or is not a file"
        )
    peer = args.peer
    if peer not in ("best", "deploy"):
        try:
            peer = int(peer)
        except ValueError:
            raise CommandError(
                f"--peer must be 'best', 'deploy' or an integer, got {peer!r}"
            ) from None
    import keras

    from keras_pcl.training.evaluation import check_keras_archive

    try:
        check_keras_archive(args.checkpoint, "checkpoint")
        model = keras.saving.load_model(args.checkpoint)
    except Exception as error:  # Keras raises several types for bad files.
        raise CommandError(
            f"could not load {args.checkpoint!r} as a Keras model: {_first_line(error)}"
        ) from None
    from keras_pcl.multi_branch import MultiBranchModel

    if not isinstance(model, MultiBranchModel):
        raise CommandError(
            f"{args.checkpoint!r} holds a {type(model).__name__}, not a "
            "PeerCollaborativeModel or a model of keras_pcl.baselines; a "
            "plain network needs no peer export (use `model.export(...)`)"
        )
    if not args.student and not model.has_mean_teachers:
        args.student = True  # The baselines deploy the peers themselves.
    try:
        exported = model.export_peer(
            args.output,
            peer=peer,
            mean_teacher=False if args.student else None,
            format=args.format,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError, ImportError) as error:
        raise CommandError(_first_line(error)) from None
    kind = (
        "peer"
        if not model.has_mean_teachers
        else ("student" if args.student else "mean teacher")
    )
    index = model.resolve_peer(peer)
    print(
        f"Exported peer {index} ({kind}, {exported.count_params():,} "
        f"parameters) as {args.format} to {args.output}"
    )


def _add_config_arguments(parser):
    from keras_pcl.training import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        _add_field_argument(parser, field.name)


def _add_field_argument(parser, name):
    """`--name`, typed, with the help and choices of `TrainConfig.name`."""
    from keras_pcl.training import config

    field = {f.name: f for f in dataclasses.fields(config.TrainConfig)}[name]
    default = getattr(config.TrainConfig(), name)
    help = f"{field.metadata['help']} Default: {default}"
    choices = config.field_choices(field)
    kind = config.field_kind(field)
    if choices:
        parser.add_argument(f"--{name}", choices=choices, default=default, help=help)
    elif kind is bool:
        parser.add_argument(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            default=default,
            help=help,
        )
    elif kind is tuple:
        parser.add_argument(
            f"--{name}",
            type=lambda text: _tuple_argument(field, text),
            default=default,
            metavar="A,B",
            help=help,
        )
    elif kind in (int, float):
        parser.add_argument(f"--{name}", type=kind, default=default, help=help)
    else:
        parser.add_argument(f"--{name}", default=default, help=help)


def _tuple_argument(field, text):
    from keras_pcl.training import config

    try:
        return config.parse_tuple(field, text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def configure_process(num_branches):
    """Process-wide settings for training, where they can still act.

    `keras_pcl.process.configure(num_branches)`: TensorFlow's inter-op pool
    (on a CPU with fewer cores than branches) and glibc's malloc (the
    torch backend). The `keras-pcl` command starts TensorFlow itself, so
    the thread call comes before its first op; in a process where
    TensorFlow already runs (`main` inside a test or a notebook), the pools
    stay as they are. Prints what was set, in one line. If glibc refuses a
    malloc setting, a one-line warning says so and training goes on
    without it. Neither setting changes a computed number, only speed.
    """
    from keras_pcl import process

    try:
        print(f"keras-pcl: {process.configure(num_branches)}")
    except ValueError as error:  # KERAS_PCL_CONFIGURE_MALLOC is neither 1 nor 0.
        raise CommandError(_first_line(error)) from None
    except RuntimeError as error:
        print(f"keras-pcl: warning: {error}", file=sys.stderr)


class _PrintSpeedups(logging.Handler):
    """Prints the `keras_pcl` logger's lines (what each model speeds up)."""

    def emit(self, record):
        print(f"keras-pcl: {record.getMessage()}")


def _train_config(args):
    """The `TrainConfig` of `train`/`compare`'s flags; sizes the process for it."""
    from keras_pcl import process
    from keras_pcl import training

    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(training.TrainConfig)
    }
    if isinstance(args.num_peers, int) and args.num_peers >= 1:
        configure_process(process.parallel_branches(args.method, args.num_peers))
    return training.TrainConfig(**values)


def _training_errors():
    """What a training run raises for the user to fix: reported as one line."""
    from keras_pcl.callbacks import NonFiniteError

    return (ValueError, FileNotFoundError, ImportError, NonFiniteError)


def run_train(args):
    """`keras-pcl train`: `keras_pcl.training.train` with the flags' config."""
    from keras_pcl import training

    try:
        config = _train_config(args)
        result = training.train(config)
    except _training_errors() as error:
        raise CommandError(_first_line(error)) from None
    print(f"Best peer: {result['best_peer']}")
    print(f"Final model ({config.method}): {result['paths']['model']}")
    if result["best_peer"] is not None and result["exported_peer"] is not None:
        print(f"Exported best peer: {result['paths']['export']}")
    elif result["exported_peer"] is not None:
        print(
            f"Exported peer {result['exported_peer']} to "
            f"{result['paths']['export']}: {result['exported_peer_reason']}"
        )


def run_compare(args):
    """`keras-pcl compare`: `keras_pcl.training.compare` with the flags' config."""
    from keras_pcl.training import equal_cost

    try:
        result = equal_cost.compare(
            _train_config(args),
            ratio=args.cost_ratio,
            timing_steps=args.timing_steps,
        )
    except _training_errors() as error:
        raise CommandError(_first_line(error)) from None
    for line in equal_cost.summary(result):
        print(line)


def run_evaluate(args):
    """`keras-pcl evaluate`: top-1/top-5 accuracy of a network on a split."""
    from keras_pcl.training import evaluation

    try:
        if args.confusion_matrix:
            evaluation.check_confusion_matrix_path(args.confusion_matrix)
        network = evaluation.load_network(args.network)
        data = evaluation.evaluation_data(
            args.dataset,
            args.split,
            image_shape=network.image_shape,
            image_size=args.image_size,
            validation_split=args.validation_split,
            seed=args.seed,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
        )
        evaluation.check_compatible(network, data, args.dataset)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CommandError(_first_line(error)) from None
    rows = []
    if network.model is not None:
        rows = _checkpoint_rows(network.model, data.batches)
    scores = evaluation.score(network, data)
    rows.append((f"{network.description} top-1", f"{100 * scores['top1']:5.1f}%"))
    if scores["top5"] is None:
        rows.append(
            (
                f"{network.description} top-5",
                f"    - (not reported: {len(data.class_names)} classes <= "
                f"{evaluation.TOP_K})",
            )
        )
    else:
        rows.append((f"{network.description} top-5", f"{100 * scores['top5']:5.1f}%"))
    print(f"Accuracy on {data.name} ({data.num_examples} images):")
    for name, value in rows:
        print(f"  {name:<44} {value}")
    if args.confusion_matrix:
        try:
            evaluation.write_confusion_matrix(
                scores["confusion"],
                data.class_names,
                args.confusion_matrix,
                title=f"{network.description} on {data.name}",
            )
        except (ValueError, ImportError, OSError) as error:
            raise CommandError(_first_line(error)) from None
        print(f"Confusion matrix: {args.confusion_matrix}")


def _checkpoint_rows(model, batches):
    """Top-1 rows of every peer (and ensemble, mean teacher) of a checkpoint."""
    import keras_pcl

    scores = model.evaluate(batches, verbose=0, return_dict=True)
    if not isinstance(model, keras_pcl.PeerCollaborativeModel):  # A baseline.
        return [
            (
                f"{type(model).__name__} "
                f"{name[: -len('_accuracy')].replace('_', ' ')} top-1",
                f"{100 * value:5.1f}%",
            )
            for name, value in scores.items()
            if name.endswith("_accuracy")
        ]
    names = [(f"peer {j} (student)", f"peer_{j}") for j in range(model.num_peers)]
    names.append(("peer ensemble", "ensemble"))
    names += [
        (f"peer {j} mean teacher", f"mean_teacher_{j}") for j in range(model.num_peers)
    ]
    return [
        (f"{name} top-1", f"{100 * scores[f'{key}_accuracy']:5.1f}%")
        for name, key in names
    ]


class CommandError(Exception):
    """An error reported as one line with exit code 1."""


def main(argv=None):
    """Runs one `keras-pcl` command (the console script: `keras_pcl_command`).

    While it runs, the speed-ups each model uses (`model.speedups`, logged
    by `keras_pcl` at level INFO) are printed, one line per model.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("keras_pcl")
    handler, level = _PrintSpeedups(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args.run(args)
    except CommandError as error:
        print(f"keras-pcl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return EXIT_OK


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
