"""Exporting one peer of a trained `PeerCollaborativeModel` for serving.

`export_peer` writes the deployable network (preprocessing, trunk, one peer
and its classifier; nothing else) in one of four formats:

| format | artifact | backends that write it |
| --- | --- | --- |
| `"keras"` | `.keras` file of the plain network (images -> logits) | all |
| `"tf_saved_model"` | SavedModel with a serving signature | TensorFlow, JAX |
| `"onnx"` | `.onnx` file | TensorFlow, PyTorch |
| `"tflite"` | `.tflite` flatbuffer (LiteRT) | TensorFlow |

A PCL `.keras` checkpoint loads on every backend, so a format that the
current backend cannot write is one `KERAS_BACKEND=tensorflow keras-pcl
export ...` away; the error says so.

The format follows the file's extension unless given (`format_for_path`).

Serving signature (`tf_saved_model`, `onnx`, `tflite`): input `images`, raw
pixels `(batch, height, width, channels)` (NHWC, also for channels-first
backbones), float32 in [0, 255] (not scaled to [0, 1]); the SavedModel has
a second signature, `serving_uint8`, for uint8 pixels. The model's own
`preprocessing` runs inside, so callers need no normalisation constants.
Outputs: `logits` and `probabilities` (softmax of the logits), float32
`(batch, num_classes)`.

The format writers are Keras' own (`keras.Model.save`, `keras.Model.export`,
`keras.export.ExportArchive`); this module only builds the serving network,
checks arguments and picks the writer.
"""

import os

import keras
import numpy as np

from keras_pcl.validation import check_class_names

# The class names in an exported `.keras` archive, a SavedModel's
# `assets.extra/` and a PCL `.keras` checkpoint's assets.
CLASS_NAMES_FILE = "class_names.json"

FORMATS = ("keras", "tf_saved_model", "onnx", "tflite")

# Backends on which Keras (3.15) writes each format with the `export` extra.
# tf_saved_model on torch needs torch_xla, tflite on torch needs
# litert-torch, onnx on JAX needs jax2onnx (and flax, orbax, ...), and Keras
# does not write LiteRT from JAX: none of them is a dependency of keras-pcl.
_FORMAT_BACKENDS = {
    "keras": ("tensorflow", "jax", "torch"),
    "tf_saved_model": ("tensorflow", "jax"),
    "onnx": ("tensorflow", "torch"),
    "tflite": ("tensorflow",),
}

# The file suffix each single-file format needs (a SavedModel is a directory).
FORMAT_EXTENSIONS = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}

# Python modules each format needs beyond keras and tensorflow.
_FORMAT_MODULES = {
    "onnx": {
        "tensorflow": ("onnx", "tf2onnx"),
        "torch": ("onnx", "onnxscript"),
    },
}


def format_for_path(filepath, format=None):
    """The export format of `filepath`: `format`, or what its extension says.

    `.keras`, `.onnx` and `.tflite` name their format; any other path is a
    `tf_saved_model` directory. An explicit `format` must agree with the
    extension: a SavedModel directory named `model.onnx`, or an ONNX file
    named `model.keras`, is refused.

    Args:
        filepath: where the export goes.
        format: None (from the extension) or one of `FORMATS`.

    Returns:
        One of `FORMATS`.

    Raises:
        ValueError: an unknown `format`, or one that the extension of
            `filepath` contradicts (the message names both).

    Example:

    >>> format_for_path("model.onnx"), format_for_path("served/resnet32")
    ('onnx', 'tf_saved_model')
    """
    filepath = os.fspath(filepath)
    by_extension = "tf_saved_model"
    for name, extension in FORMAT_EXTENSIONS.items():
        if filepath.endswith(extension):
            by_extension = name
    if format is None:
        return by_extension
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {list(FORMATS)} (or None: from the "
            f"extension of `filepath`). Received: format={format!r}"
        )
    if format != by_extension:
        extension = FORMAT_EXTENSIONS.get(format)
        wanted = (
            f"a file ending in '{extension}'"
            if extension
            else "a directory without a .keras, .onnx or .tflite extension"
        )
        found = (
            f"the extension of format {by_extension!r}"
            if by_extension != "tf_saved_model"
            else "no .keras, .onnx or .tflite extension (a tf_saved_model directory)"
        )
        raise ValueError(
            f"`filepath` {filepath!r} has {found}, but format={format!r} was "
            f"asked for: format "
            f"{format!r} writes {wanted}. Change the extension, or pass "
            f"format={by_extension!r} (or no format: it follows the "
            f"extension). Received: filepath={filepath!r}, format={format!r}"
        )
    return format


def serving_model(network, data_format=None):
    """Wraps a deployable network in the serving signature.

    Args:
        network: a functional model from raw images (in the backbone's own
            layout) to logits, e.g. `PeerCollaborativeModel.get_peer(j)`.
        data_format: layout of `network`'s input, `"channels_last"` or
            `"channels_first"`; defaults to `keras.config.image_data_format()`.
            The serving input is always NHWC.

    Returns:
        A functional `keras.Model`: float32 NHWC images in [0, 255] ->
        `{"logits": ..., "probabilities": ...}`. It holds the weights of
        `network` and no others.

    Example:

    >>> serving = serving_model(model.get_peer(0))      # doctest: +SKIP
    >>> serving(images)["probabilities"].shape           # doctest: +SKIP
    (8, 10)
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    shape = tuple(network.inputs[0].shape[1:])
    if data_format == "channels_first":
        shape = shape[1:] + shape[:1]
    images = keras.Input(shape=shape, dtype="float32", name="images")
    x = images
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    network = keras.models.clone_model(
        network, clone_function=_normalization_as_rescaling
    )
    logits = keras.layers.Identity(name="logits", dtype="float32")(network(x))
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    return keras.Model(
        images,
        {"logits": logits, "probabilities": probabilities},
        name=f"{network.name}_serving",
    )


def _normalization_as_rescaling(layer):
    """`Normalization` as the equivalent `Rescaling`; any other layer as is.

    Written by hand: `Normalization` keeps its statistics in tensors created
    outside the traced serving function, and Keras' ONNX export (tf2onnx)
    turns such captured tensors into extra required graph inputs. `Rescaling`
    casts its constants inside the function. Same arithmetic:
    `(x - mean) / max(sqrt(variance), epsilon)`.
    """
    if not isinstance(layer, keras.layers.Normalization) or layer.invert:
        return layer
    mean = keras.ops.convert_to_numpy(layer.mean).astype("float64")
    variance = keras.ops.convert_to_numpy(layer.variance).astype("float64")
    scale = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
    return keras.layers.Rescaling(
        scale=scale.astype("float32"),
        offset=(-mean * scale).astype("float32"),
        name=layer.name,
    )


def export_peer(
    model,
    filepath,
    peer="best",
    mean_teacher=None,
    format=None,
    overwrite=False,
    verbose=False,
    class_names=None,
):
    """Writes one peer of `model` as a standalone, servable network.

    Args:
        model: a `keras_pcl.PeerCollaborativeModel` or a model of
            `keras_pcl.baselines`.
        filepath: where to write: a directory for `"tf_saved_model"`, a file
            ending in `.keras`, `.onnx` or `.tflite` for the other formats.
        peer: `"best"` (the peer recorded by
            `keras_pcl.callbacks.BestPeerTracker`, see `model.best_peer`),
            `"deploy"` (`model.deploy_peer`) or an int peer index.
        mean_teacher: export the peer's mean teacher (what PCL deploys) or,
            if False, the student peer. Defaults to the mean teacher for
            models that have them (PCL) and to the peer otherwise (the
            baselines of `keras_pcl.baselines`).
        format: one of `"keras"`, `"tf_saved_model"`, `"onnx"`,
            `"tflite"`, or None (default): from the extension of
            `filepath` (`format_for_path`; no known extension: a
            SavedModel directory). A format that the extension contradicts
            raises.
        overwrite: replace an existing `filepath`. Defaults to False.
        verbose: let Keras print what it writes.
        class_names: the names of the classes, written into the export (see
            `write_class_names`). Defaults to `model.class_names` (set by
            `keras_pcl.training.train`); None there: none written.

    Returns:
        The exported network as a `keras.Model` (for `"keras"`, the plain
        network; otherwise the serving model of `serving_model`).

    Raises:
        ValueError: an unknown `format`, a `format` the current backend cannot
            write (the message names the backends that can), a bad `peer`, a
            file extension that does not match `format` (e.g. a SavedModel
            asked for at `model.onnx`), or `peer="best"` when no best peer
            was recorded.
        FileExistsError: `filepath` exists and `overwrite=False`.

    Example:

    ```python
    model.fit(x, y, validation_data=(x_val, y_val),
              callbacks=[keras_pcl.callbacks.BestPeerTracker()])
    model.export_peer("exported/resnet32", peer="best")
    served = tf.saved_model.load("exported/resnet32")
    served.signatures["serving_default"](images=raw_images)["probabilities"]
    ```
    """
    format = format_for_path(filepath, format)
    backend = keras.backend.backend()
    if backend not in _FORMAT_BACKENDS[format]:
        raise ValueError(
            f"`format={format!r}` cannot be written with the {backend} "
            f"backend; Keras writes it with the "
            f"{' or '.join(_FORMAT_BACKENDS[format])} backend. Save the PCL "
            "model (`model.save('pcl.keras')`; it loads on every backend) and "
            "export from there, e.g. `KERAS_BACKEND=tensorflow keras-pcl "
            f"export pcl.keras OUTPUT --format {format}`. "
            f"Received: format={format!r}"
        )
    _check_modules(format, backend)
    filepath = os.fspath(filepath)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(
            f"`filepath` already exists; pass `overwrite=True` to replace it "
            f"or choose another path. Received: filepath={filepath!r}"
        )
    index = model.resolve_peer(peer)  # `keras_pcl.deployment.resolve_peer`
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    class_names = check_class_names(class_names, model.num_classes)
    network = model.get_peer(index, mean_teacher=mean_teacher)
    if format == "keras":
        network.save(filepath, overwrite=True)
        write_class_names(filepath, class_names)
        return network

    serving = serving_model(network)
    if os.path.isdir(filepath):
        _remove_tree(filepath)
    elif os.path.exists(filepath):
        os.remove(filepath)
    input_spec = keras.InputSpec(
        shape=(None,) + tuple(serving.inputs[0].shape[1:]), dtype="float32"
    )
    if format == "tf_saved_model":
        _write_saved_model(serving, filepath, input_spec, verbose)
    elif format == "onnx":
        serving.export(
            filepath, format="onnx", input_signature=[input_spec], verbose=verbose
        )
        _name_onnx_inputs_and_outputs(filepath, serving)
    else:
        _write_tflite(serving, filepath, input_spec)
    write_class_names(filepath, class_names)
    return serving


def write_class_names(path, class_names):
    """Writes `class_names` into the exported network at `path`.

    Where each format keeps them (`read_class_names` reads them back):

    * `.keras`: a `class_names.json` entry of the archive (the full PCL
      model keeps them in its own assets, `model.class_names`);
    * SavedModel: `assets.extra/class_names.json` (files TensorFlow does
      not load);
    * `.onnx`: the model's `metadata_props`, key `class_names` (JSON);
    * `.tflite`: not written (LiteRT metadata needs `tflite_support`).

    `class_names=None` writes nothing. Returns whether names were written.
    """
    import json
    import zipfile

    if class_names is None:
        return False
    text = json.dumps(list(class_names))
    path = os.fspath(path)
    if os.path.isdir(path):
        extra = os.path.join(path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, CLASS_NAMES_FILE), "w") as f:
            f.write(text)
    elif path.endswith(".keras"):
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(CLASS_NAMES_FILE, text)
    elif path.endswith(".onnx"):
        import onnx

        onnx_model = onnx.load(path)
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = "class_names", text
        onnx.save(onnx_model, path)
    else:
        return False
    return True


def read_class_names(path):
    """The class names an exported network carries (a tuple), or None.

    Reads what `write_class_names` writes (and a full `.keras` model's
    own). None for a network without them: an export of an older version,
    a `.tflite` file, a network saved by hand.
    """
    import json
    import zipfile

    path = os.fspath(path)
    text = None
    if os.path.isdir(path):
        file = os.path.join(path, "assets.extra", CLASS_NAMES_FILE)
        if os.path.isfile(file):
            with open(file) as f:
                text = f.read()
    elif path.endswith(".keras") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in (CLASS_NAMES_FILE, f"assets/{CLASS_NAMES_FILE}"):
                if name in archive.namelist():
                    text = archive.read(name).decode()
                    break
    elif path.endswith(".onnx"):
        import onnx

        props = onnx.load(path, load_external_data=False).metadata_props
        text = next((p.value for p in props if p.key == "class_names"), None)
    return None if text is None else tuple(json.loads(text))


def _write_saved_model(serving, filepath, input_spec, verbose):
    archive = keras.export.ExportArchive()
    archive.track(serving)

    def serve(images):
        return serving(images, training=False)

    def serve_uint8(images):
        return serving(keras.ops.cast(images, "float32"), training=False)

    archive.add_endpoint("serve", serve, input_signature=[input_spec])
    archive.add_endpoint(
        "serving_uint8",
        serve_uint8,
        input_signature=[keras.InputSpec(shape=input_spec.shape, dtype="uint8")],
    )
    archive.write_out(filepath, verbose=verbose)


def _write_tflite(serving, filepath, input_spec):
    """The serving model as a `.tflite` file whose input is named `images`.

    Written by hand: `keras.Model.export(format="litert")` converts a
    function of positional arguments, whose input the converter then names
    `args_0`. This converts a SavedModel whose endpoint takes `images`
    (TensorFlow's own path from Keras 3: `ExportArchive`, then
    `TFLiteConverter.from_saved_model`), so the `serving_default` signature
    reads `images` and returns `logits` and `probabilities`.
    """
    import tempfile

    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(serving)

    def serve(images):
        return serving(images, training=False)

    archive.add_endpoint("serve", serve, input_signature=[input_spec])
    with tempfile.TemporaryDirectory() as saved_model:
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
        converter.experimental_enable_resource_variables = True
        flatbuffer = converter.convert()
    with open(filepath, "wb") as file:
        file.write(flatbuffer)


def _check_modules(format, backend):
    import importlib.util

    modules = _FORMAT_MODULES.get(format, {}).get(backend, ())
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"`format={format!r}` on the {backend} backend needs "
            f"{', '.join(missing)}. Install them with "
            '`pip install "keras-pcl[export]"`.'
        )


def _name_onnx_inputs_and_outputs(filepath, serving):
    """Renames the ONNX graph's input `images`, outputs `logits`/`probabilities`.

    Written by hand: Keras' ONNX export names them after the traced function
    (`args_0`, `input_0`, or internal tensor ids on torch). Outputs come in
    the flattened order of the serving model's output dict (sorted keys).
    """
    import onnx

    onnx_model = onnx.load(filepath)
    graph = onnx_model.graph
    names = {graph.input[0].name: "images"}
    output_keys = sorted(serving.output.keys())
    for output, key in zip(graph.output, output_keys):
        names[output.name] = key
    for value in list(graph.input) + list(graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = names.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = names.get(name, name)
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, filepath)


def _remove_tree(path):
    import shutil

    shutil.rmtree(path)
