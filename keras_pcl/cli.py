"""The `keras-pcl` command line.

    keras-pcl export CHECKPOINT.keras OUTPUT [--peer best] [--format tf_saved_model]

Each subcommand wraps a library call (`export` ->
`PeerCollaborativeModel.export_peer`). Exit codes: 0 success, 1 an error
(printed as one line, `keras-pcl <command>: error: ...`), 2 bad usage.
The Keras backend is the usual `KERAS_BACKEND` (TensorFlow if unset);
`tf_saved_model` and `tflite` need TensorFlow (or JAX for SavedModel).
"""

import argparse
import os
import sys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser():
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-pcl",
        description="Peer Collaborative Learning for Keras 3.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    export = commands.add_parser(
        "export",
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
            "where to write: a directory for tf_saved_model, a file ending "
            "in .keras, .onnx or .tflite for the other formats"
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
    export.add_argument(
        "--format",
        default="tf_saved_model",
        choices=["keras", "tf_saved_model", "onnx", "tflite"],
        help="artifact format. Default: tf_saved_model",
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
    return parser


def run_export(args):
    """`keras-pcl export`: loads the checkpoint and calls `export_peer`."""
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
            )
    import keras

    import keras_pcl

    try:
        model = keras.saving.load_model(args.checkpoint)
    except Exception as error:  # Keras raises several types for bad files.
        raise CommandError(
            f"could not load {args.checkpoint!r} as a Keras model: "
            f"{_first_line(error)}"
        )
    if not isinstance(model, keras_pcl.PeerCollaborativeModel):
        raise CommandError(
            f"{args.checkpoint!r} holds a {type(model).__name__}, not a "
            "PeerCollaborativeModel; a plain network needs no peer export "
            "(use `model.export(...)`)"
        )
    try:
        exported = model.export_peer(
            args.output,
            peer=peer,
            mean_teacher=not args.student,
            format=args.format,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError, ImportError) as error:
        raise CommandError(_first_line(error))
    kind = "student" if args.student else "mean teacher"
    index = keras_pcl.export.resolve_peer(model, peer)
    print(
        f"Exported peer {index} ({kind}, {exported.count_params():,} "
        f"parameters) as {args.format} to {args.output}"
    )


class CommandError(Exception):
    """An error reported as one line with exit code 1."""


def main(argv=None):
    """Entry point of the `keras-pcl` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CommandError as error:
        print(f"keras-pcl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
