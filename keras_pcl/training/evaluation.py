"""Scoring a trained network on a dataset split (`keras-pcl evaluate`).

`load_network` reads what `keras-pcl train` and `keras-pcl export` write:
a `.keras` file (a plain network, or a PCL or baseline checkpoint, whose
deployed peer is scored), a SavedModel directory (`tf.saved_model.load`,
its `serving_default` signature), a `.onnx` file (ONNX Runtime) or a
`.tflite` file (TensorFlow's `tf.lite.Interpreter`). Every
one of them takes raw pixels and returns logits (`keras_pcl.export`).
`evaluation_data` reads a split: the held-out `validation` split of
training, `all` of an image folder (a test folder), or the `test` split of
CIFAR in tfds. `score` gives top-1 and top-5 accuracy and the confusion
matrix; `write_confusion_matrix` draws it (matplotlib, the `bench` extra).
"""

import dataclasses
import os

import numpy as np

SPLITS = ("validation", "all", "test")
# tfds datasets with a labelled `test` split.
TEST_SPLITS = ("cifar10", "cifar100")
# Top-5 accuracy is reported with more classes than this (else it is 100%).
TOP_K = 5


@dataclasses.dataclass
class Network:
    """A trained network as a function of raw pixels.

    Attributes:
        predict: `fn(float32 NHWC images in [0, 255]) -> NumPy logits`.
        num_classes: the size of its output.
        image_shape: `(height, width, channels)` it takes (None where the
            file does not say).
        description: what it is, for the report.
        model: the PCL or baseline model of a `.keras` checkpoint, or None.
        class_names: the names of its classes, as the file records them
            (`keras_pcl.export.read_class_names`), or None where it does not.
    """

    predict: object
    num_classes: int
    image_shape: tuple
    description: str
    model: object = None
    class_names: tuple = None


def network_format(path):
    """`"keras"`, `"tf_saved_model"`, `"onnx"` or `"tflite"`, from `path`.

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ValueError: a file or folder of no supported format.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            "`network` does not exist: pass a .keras file, a SavedModel "
            f"directory, a .onnx or a .tflite file. Received: network={path!r}"
        )
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "tf_saved_model"
    elif path.endswith(".keras"):
        return "keras"
    elif path.endswith(".onnx"):
        return "onnx"
    elif path.endswith(".tflite"):
        return "tflite"
    raise ValueError(
        "`network` must be a .keras file, a SavedModel directory (holding "
        "saved_model.pb), a .onnx or a .tflite file, as `keras-pcl train` and "
        f"`keras-pcl export` write them. Received: network={path!r}"
    )


def load_network(path):
    """The network at `path`, as a `Network` (see `network_format`).

    A PCL or baseline checkpoint is scored through the peer that `train`
    exports: the best peer's mean teacher (its student for the baselines),
    else the `deploy_peer`; `Network.model` holds the whole model.

    Raises:
        FileNotFoundError, ValueError: see `network_format`; also a file
            that does not load as its format says.
        ImportError: ONNX Runtime is missing for a `.onnx` file, or
            TensorFlow for a SavedModel or a `.tflite` file.
    """
    from keras_pcl.export import read_class_names

    path = os.fspath(path)
    format = network_format(path)
    loader = {
        "keras": _load_keras,
        "tf_saved_model": _load_saved_model,
        "onnx": _load_onnx,
        "tflite": _load_tflite,
    }[format]
    network = loader(path)
    if network.class_names is None:
        network.class_names = read_class_names(path)
    return network


def check_keras_archive(path, name="network"):
    """Raises a `ValueError` saying what `path` is, unless a `.keras` zip.

    Keras reports any file that is not a zip archive as "File not found";
    this names what it is instead (empty, HDF5, a damaged zip, ...).
    """
    import zipfile

    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(8)
    size = os.path.getsize(path)
    if not size:
        what = "an empty file (0 bytes; a copy or a save that did not finish?)"
    elif head.startswith(b"\x89HDF"):
        what = (
            "an HDF5 file (a legacy Keras `.h5` model or a `.weights.h5` "
            "file renamed?): load a model with `keras.saving.load_model` "
            "under its .h5 name, weights with `model.load_weights`"
        )
    elif head.startswith(b"PK"):
        what = f"a damaged zip archive ({size} bytes; truncated while written?)"
    else:
        what = f"not a zip archive ({size} bytes, beginning {head!r})"
    raise ValueError(
        f"`{name}` is not a Keras model file: a .keras file is a zip "
        f"archive, and {path!r} is {what}. Received: {name}={path!r}"
    )


def _load_keras(path):
    import keras

    from keras_pcl.deployment import resolve_peer
    from keras_pcl.multi_branch import MultiBranchModel

    check_keras_archive(path)
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises several types for bad files.
        raise ValueError(
            f"`network` could not be loaded as a Keras model: {_first_line(error)} "
            f"Received: network={path!r}"
        ) from None
    checkpoint = None
    name = model.name
    if isinstance(model, MultiBranchModel):
        checkpoint = model
        peer = "best" if model.best_peer is not None else "deploy"
        index = resolve_peer(model, peer)
        kind = "mean teacher" if model.has_mean_teachers else "peer"
        why = "best peer" if peer == "best" else "deploy_peer"
        name = f"peer {index} {kind} ({why})"
        model = model.get_peer(index)

    def predict(images):
        return keras.ops.convert_to_numpy(model(images, training=False))

    return Network(
        predict=predict,
        num_classes=int(model.outputs[0].shape[-1]),
        image_shape=tuple(model.inputs[0].shape[1:]),
        description=name,
        model=checkpoint,
        class_names=None if checkpoint is None else checkpoint.class_names,
    )


def _load_saved_model(path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
        spec = signature.structured_input_signature[1]["images"]
        logits = signature.structured_outputs["logits"]
    except Exception as error:
        raise ValueError(
            "`network` is not a SavedModel of `keras-pcl export` (a "
            "`serving_default` signature from `images` to `logits`): "
            f"{_first_line(error)} Received: network={path!r}"
        ) from None

    def predict(images):
        return signature(images=tf.constant(images, tf.float32))["logits"].numpy()

    return Network(
        predict=predict,
        num_classes=int(logits.shape[-1]),
        image_shape=tuple(spec.shape[1:]),
        description=f"SavedModel {os.path.basename(os.path.normpath(path))}",
    )


def _load_onnx(path):
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "Scoring a .onnx network needs ONNX Runtime. Install it with "
            '`pip install "keras-pcl[export]"`.'
        ) from None
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ValueError(
            f"`network` could not be loaded by ONNX Runtime: {_first_line(error)} "
            f"Received: network={path!r}"
        ) from None
    inputs = session.get_inputs()
    outputs = {o.name: o for o in session.get_outputs()}
    output = outputs.get("logits") or next(iter(outputs.values()))
    shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])

    def predict(images):
        feed = {inputs[0].name: np.asarray(images, "float32")}
        return session.run([output.name], feed)[0]

    return Network(
        predict=predict,
        num_classes=int(output.shape[-1]),
        image_shape=shape,
        description=f"ONNX {os.path.basename(path)}",
    )


def _load_tflite(path):
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "Scoring a .tflite network needs TensorFlow (its "
            "`tf.lite.Interpreter`). Install it with `pip install tensorflow`."
        ) from None
    try:
        interpreter = tf.lite.Interpreter(model_path=path)
        runner = interpreter.get_signature_runner("serving_default")
        signature = interpreter.get_signature_list()["serving_default"]
        (input_name,) = signature["inputs"]  # `images` (`args_0` before).
        if "logits" not in signature["outputs"]:
            raise ValueError(f"outputs {signature['outputs']}, no `logits`")
    except Exception as error:
        raise ValueError(
            "`network` is not a TFLite file of `keras-pcl export` (a "
            "`serving_default` signature from `images` to `logits`): "
            f"{_first_line(error)} Received: network={path!r}"
        ) from None
    details = runner.get_input_details()[input_name]
    output = runner.get_output_details()["logits"]
    shape = tuple(int(d) if d > 0 else None for d in details["shape_signature"][1:])

    def predict(images):
        images = np.asarray(images, "float32")
        return runner(**{input_name: images})["logits"]

    return Network(
        predict=predict,
        num_classes=int(output["shape"][-1]),
        image_shape=shape,
        description=f"TFLite {os.path.basename(path)}",
    )


@dataclasses.dataclass
class EvaluationData:
    """A split to score: batches of `(uint8 images, int labels)`."""

    batches: object  # A batched `tf.data.Dataset`.
    class_names: tuple
    num_examples: int
    name: str  # e.g. "cifar10, test split".


def evaluation_data(
    dataset,
    split="validation",
    *,
    image_shape=None,
    image_size=None,
    validation_split=0.1,
    seed=0,
    data_dir=None,
    batch_size=128,
):
    """The examples of one split of `dataset`, batched.

    Args:
        dataset: as `TrainConfig.dataset`: `digits`, `cifar10`, `cifar100`,
            `imagenet2012` or the path of an image folder.
        split: `"validation"` (the split held out in training: pass the
            training `validation_split` and `seed`), `"all"` (every image of
            an image folder, e.g. a test folder) or `"test"` (the tfds test
            split of `TEST_SPLITS`).
        image_shape: the network's `(height, width, channels)`: images of
            another size are resized to it (image folders: when decoded).
        image_size: image folders and digits, as in training; default: the
            network's size.

    Raises:
        ValueError: a split the dataset does not have, or no validation
            split (`validation_split=0`).
        FileNotFoundError: a missing folder or tfds dataset.
    """
    from keras_pcl import validation

    validation.check_choice("split", split, SPLITS)
    size = tuple(image_size) if image_size else None
    if size is None and image_shape and None not in tuple(image_shape[:2]):
        size = tuple(int(v) for v in image_shape[:2])
    folder = dataset not in ("digits", "imagenet2012") + TEST_SPLITS
    if split == "all":
        if not folder:
            raise ValueError(
                "`split='all'` scores every image of an image folder (e.g. "
                f"your test folder); {dataset!r} is not one"
                + (" (use split='test')" if dataset in TEST_SPLITS else "")
                + f". Received: dataset={dataset!r}"
            )
        from keras_pcl import data

        splits = data.image_folder(
            dataset,
            validation_split=None,
            image_size=size,
            batch_size=None,
            shuffle=False,
        )
        examples, class_names = splits.train, splits.class_names
        count, name = splits.num_train, f"{dataset}, all images"
    elif split == "test":
        if dataset not in TEST_SPLITS:
            hint = {
                "imagenet2012": "its labelled held-out split is the official "
                "validation split: use split='validation' with "
                "validation_split=0",
                "digits": "use split='validation'",
            }.get(dataset, "point `dataset` at your test folder with split='all'")
            raise ValueError(
                f"`split='test'` is the tfds test split of {list(TEST_SPLITS)}; "
                f"{dataset!r} has none here: {hint}. Received: dataset={dataset!r}"
            )
        examples, class_names, count = _tfds_test_split(dataset, data_dir)
        name = f"{dataset}, test split"
    else:
        from keras_pcl import training

        config = training.TrainConfig(
            dataset=dataset,
            data_dir=data_dir,
            image_size=size if dataset == "digits" or folder else None,
            validation_split=validation_split,
            seed=seed,
        )
        splits = training.load_data(config)
        if splits.validation is None:
            raise ValueError(
                "`split='validation'` needs the validation split of training, "
                "and `validation_split` is 0. Pass the validation_split of "
                "training, or score a test folder with split='all'. "
                f"Received: validation_split={validation_split!r}"
            )
        examples, class_names = splits.validation, splits.class_names
        count, name = splits.num_validation, f"{dataset}, validation split"
        if dataset == "imagenet2012":  # Batched by the loader.
            examples = examples.unbatch()
    batches = _resized(examples, image_shape).batch(batch_size)
    return EvaluationData(batches.prefetch(-1), tuple(class_names), count, name)


def _tfds_test_split(name, data_dir):
    from keras_pcl.data import datasets

    builder = datasets._builder(name, data_dir, download=False, manual_dir=None)
    records = datasets._as_dataset(
        builder, split="test", as_supervised=True, shuffle_files=False
    )
    count = datasets._num_examples(builder, "test", records)
    return records, tuple(builder.info.features["label"].names), count


def _resized(examples, image_shape):
    """Resizes images whose height and width are not the network's."""
    import tensorflow as tf

    if not image_shape or None in tuple(image_shape[:2]):
        return examples
    height, width = (int(v) for v in image_shape[:2])
    spec = examples.element_spec[0]
    if tuple(spec.shape[:2]) == (height, width):
        return examples

    def resize(image, label):
        resized = tf.image.resize(image, (height, width), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), label

    return examples.map(resize)


def check_compatible(network, data, dataset):
    """Raises a `ValueError` unless `network` can score `data`'s classes.

    Also when the network records its class names (`Network.class_names`)
    and `data`'s differ (other names, or another order: label `i` would
    mean another class); warns when it records none.
    """
    if network.num_classes != len(data.class_names):
        names = ", ".join(data.class_names[:5])
        more = ", ..." if len(data.class_names) > 5 else ""
        raise ValueError(
            f"The network outputs {network.num_classes} classes, and "
            f"{data.name} has {len(data.class_names)} ({names}{more}). Score "
            "it on data with the classes it was trained on (the same class "
            f"sub-folders). Received: dataset={dataset!r}"
        )
    check_class_names_match(network, data, dataset)
    channels = data.batches.element_spec[0].shape[-1]
    if network.image_shape and network.image_shape[-1] not in (None, channels):
        raise ValueError(
            f"The network takes {network.image_shape[-1]}-channel images, and "
            f"{data.name} has {channels}-channel ones. "
            f"Received: dataset={dataset!r}"
        )


def check_class_names_match(network, data, dataset):
    """Raises if `network`'s class names are not `data`'s; warns if unknown."""
    import warnings

    expected, found = network.class_names, tuple(data.class_names)
    if expected is None:
        warnings.warn(
            f"{network.description} does not record its class names (an "
            "export written before keras-pcl recorded them, a .tflite file "
            f"or a network saved by hand): nothing checks that {data.name}'s classes "
            f"{list(found)} are the ones it was trained on, in that order. "
            "A wrong folder scores near chance. Re-export it with "
            "`keras-pcl export` from the training checkpoint to record them.",
            stacklevel=3,
        )
        return
    if expected != found:
        same = set(expected) == set(found)
        order = " (the same names in another order)" if same else ""
        raise ValueError(
            f"The network was trained on the classes {list(expected)}, and "
            f"{data.name} has {list(found)}{order}: label i would mean another "
            "class. Score it on data with the class sub-folders it was "
            f"trained on. Received: dataset={dataset!r}"
        )


def score(network, data):
    """Top-1 and top-5 accuracy and the confusion matrix of `network`.

    Returns:
        A dict: `top1`, `top5` (None with `TOP_K` classes or fewer, where it
        is always 1), `confusion` (int array, rows: true class, columns:
        predicted) and `num_examples`.
    """
    num_classes = len(data.class_names)
    confusion = np.zeros((num_classes, num_classes), "int64")
    top5_hits = 0
    for images, labels in data.batches.as_numpy_iterator():
        logits = np.asarray(network.predict(images.astype("float32")))
        labels = labels.astype("int64").reshape(-1)
        np.add.at(confusion, (labels, np.argmax(logits, -1)), 1)
        if num_classes > TOP_K:
            top = np.argsort(-logits, axis=-1)[:, :TOP_K]
            top5_hits += int((top == labels[:, None]).any(-1).sum())
    total = int(confusion.sum())
    return {
        "top1": np.trace(confusion) / max(total, 1),
        "top5": top5_hits / max(total, 1) if num_classes > TOP_K else None,
        "confusion": confusion,
        "num_examples": total,
    }


def check_confusion_matrix_path(path):
    """Raises before any scoring if the confusion matrix cannot be written.

    Raises:
        ValueError: `path` does not end in `.png`.
        ImportError: matplotlib is missing (the `bench` extra); the message
            has the pip line.
    """
    if not str(path).endswith(".png"):
        raise ValueError(
            "`confusion_matrix` must be a path ending in .png. "
            f"Received: confusion_matrix={path!r}"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "Writing the confusion matrix needs matplotlib. Install it with "
            '`pip install "keras-pcl[bench]"`.'
        ) from None


def write_confusion_matrix(confusion, class_names, path, title=""):
    """Draws `confusion` (rows: true class) as a PNG at `path`.

    Raises:
        ValueError, ImportError: see `check_confusion_matrix_path`.
    """
    check_confusion_matrix_path(path)
    from matplotlib.figure import Figure  # No pyplot: no global state.

    n = len(class_names)
    side = min(4 + 0.4 * n, 24)
    figure = Figure(figsize=(side, side))
    axes = figure.add_subplot()
    axes.imshow(confusion, cmap="Blues")
    ticks = np.arange(n)
    axes.set_xticks(ticks, class_names, rotation=90 if n > 10 else 0)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if n <= 30:
        threshold = confusion.max() / 2
        for i in range(n):
            for j in range(n):
                axes.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    color="white" if confusion[i, j] > threshold else "black",
                )
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)


def _first_line(error):
    return (str(error).strip() or type(error).__name__).splitlines()[0]
