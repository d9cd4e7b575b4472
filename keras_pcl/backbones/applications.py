"""`keras.applications` networks as backbones (`get("MobileNetV2", ...)`).

A name of `keras.applications` (`MobileNetV2`, `EfficientNetB0`,
`ResNet50`, ...) builds that network as a PCL backbone through
`keras_pcl.backbones.get`, the one resolver of backbone names:
`include_top=False, pooling="avg"`, at the resolution of the training
images, with random weights (`weights=None`) or Keras' ImageNet download
(`"imagenet"`); `load_backbone_weights` then loads a `.weights.h5` file.

`application_preprocessing` gives the model the input scaling that the
family's weights were trained with: its `preprocess_input`, as a layer.
"""

import inspect
import os
import sys
import warnings

import keras
import numpy as np

from keras_pcl import _compat


def application_names():
    """The names of the `keras.applications` constructors, sorted."""
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def is_application(name):
    """Whether `name` is a constructor of `keras.applications`."""
    return isinstance(name, str) and name in application_names()


def takes_alpha(name):
    """Whether the constructor `keras.applications.<name>` has a width `alpha`."""
    constructor = getattr(keras.applications, name)
    return "alpha" in inspect.signature(constructor).parameters


def build_application(
    name, input_shape, kernel_regularizer=None, weights=None, alpha=None
):
    """`keras.applications.<name>` as a PCL backbone (images -> features).

    Args:
        name: a name of `application_names()`, e.g. `"MobileNetV2"`.
        input_shape: `(height, width, channels)` of the training images.
        kernel_regularizer: a regularizer for every convolution and dense
            kernel (the weight decay), or None.
        weights: None (random) or `"imagenet"` (Keras downloads them).
        alpha: the width multiplier of the MobileNet families, or None for
            the constructor's default.

    Returns:
        The functional model, `include_top=False, pooling="avg"`.
    """
    kwargs = dict(
        include_top=False, weights=weights, pooling="avg", input_shape=input_shape
    )
    if alpha is not None:
        kwargs["alpha"] = alpha
    backbone = getattr(keras.applications, name)(**kwargs)
    if kernel_regularizer is not None:
        add_kernel_regularizer(backbone, kernel_regularizer)
    return backbone


def add_kernel_regularizer(model, regularizer):
    """Regularizes every convolution and dense kernel of a built `model`.

    keras.applications constructors take no `kernel_regularizer`: the
    layers' attributes are set (so that the peers, cloned from the layers'
    configs, get it too) and so are their built kernels' (which Keras reads
    in `Layer.losses`).
    """
    for layer in _compat.flatten_layers(model):
        for attribute in ("kernel", "depthwise_kernel"):
            variable = getattr(layer, attribute, None)
            if isinstance(variable, keras.Variable):
                setattr(layer, f"{attribute}_regularizer", regularizer)
                variable.regularizer = regularizer


def load_backbone_weights(backbone, path, name):
    """`backbone.load_weights(path)`, with an error naming the mismatch.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: the file does not hold weights of this architecture.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "`backbone_weights` must be a weights file (`.weights.h5`, saved "
            "with `backbone.save_weights(...)`), or 'imagenet' for a "
            "keras.applications backbone; no such file exists. "
            f"Received: backbone_weights={path!r}"
        )
    try:
        with warnings.catch_warnings():  # Keras warns once per layer first.
            warnings.simplefilter("ignore")
            backbone.load_weights(path)
    except Exception as error:  # Keras raises several types for bad files.
        detail = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ValueError(
            f"`backbone_weights` does not match backbone={name!r} (built "
            f"with include_top=False, pooling='avg', input_shape="
            f"{tuple(backbone.inputs[0].shape[1:])}): {detail} Save the "
            "weights from the same architecture (same constructor, `alpha` "
            "and input channels; any resolution), e.g. "
            f"`keras.applications.{name}(include_top=False, pooling='avg', "
            "weights='imagenet').save_weights('backbone.weights.h5')`. "
            f"Received: backbone_weights={path!r}"
        ) from None


def application_preprocessing(name, data_format=None):
    """The family's `preprocess_input` as a layer, or None if it has none.

    The weights of a keras.applications family were trained on inputs made
    by its module's `preprocess_input` (MobileNetV2: `x / 127.5 - 1`;
    ResNet50, VGG: RGB to BGR, minus the ImageNet mean; DenseNet: the
    ImageNet mean and std in [0, 1] units); fine-tuning must feed the same.
    That function is probed on a few pixels (it is affine per channel in
    every family) and rewritten as a layer, so that it runs inside the model
    and its exports.

    Written by hand: `preprocess_input` is a function on arrays, and a
    `Lambda` layer around it neither reloads in Keras' safe mode nor
    exports to ONNX. A per-channel scale and offset is a `Rescaling`; the
    BGR families' channel flip is a frozen 1x1 `Conv2D`.

    Returns:
        A `Rescaling` or frozen `Conv2D` layer, or None where
        `preprocess_input` does nothing (EfficientNet, ConvNeXt,
        MobileNetV3, RegNet: the network rescales by itself).
    """
    data_format = data_format or keras.config.image_data_format()
    constructor = getattr(keras.applications, name)
    preprocess_input = sys.modules[constructor.__module__].preprocess_input
    # Black, then 255 in each channel in turn.
    probe = np.zeros((4, 1, 1, 3), "float32")
    for c in range(3):
        probe[c + 1, ..., c] = 255.0
    kwargs = {}
    if "data_format" in inspect.signature(preprocess_input).parameters:
        kwargs["data_format"] = "channels_last"
    out = np.asarray(
        keras.ops.convert_to_numpy(preprocess_input(probe.copy(), **kwargs)),
        "float64",
    ).reshape(4, 3)
    offset = out[0]
    matrix = (out[1:] - offset).T / 255.0  # matrix[out channel, in channel]
    diagonal = np.diag(matrix)
    if np.allclose(matrix, np.diag(diagonal), atol=1e-7):
        if np.allclose(diagonal, 1) and np.allclose(offset, 0):
            return None
        scale, shift = diagonal, offset
        if np.allclose(scale, scale[0]) and np.allclose(shift, shift[0]):
            scale, shift = float(scale[0]), float(shift[0])
        elif data_format == "channels_first":
            scale, shift = scale.reshape(3, 1, 1), shift.reshape(3, 1, 1)
        if not isinstance(scale, float):
            scale, shift = scale.tolist(), shift.tolist()
        return keras.layers.Rescaling(scale, shift, name=f"{name}_preprocess_input")
    layer = keras.layers.Conv2D(
        3,
        1,
        data_format=data_format,
        trainable=False,
        name=f"{name}_preprocess_input",
    )
    channels_first = data_format == "channels_first"
    layer.build((None, 3, None, None) if channels_first else (None, None, None, 3))
    layer.set_weights(
        [matrix.T.reshape(1, 1, 3, 3).astype("float32"), offset.astype("float32")]
    )
    return layer
