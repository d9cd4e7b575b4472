"""Building blocks shared by the built-in backbones.

Every built-in backbone initialises its convolutions like the reference
PyTorch code of the online-distillation papers (`kaiming_normal_`, fan-out),
keeps Keras' batch-normalisation defaults (gamma 1, beta 0) and takes the same
`input_shape`, `kernel_regularizer`, `data_format` and `dtype` arguments,
checked here. Every layer is built with the backbone's `dtype` policy.
"""

from typing import NamedTuple

import keras
from keras import layers

from keras_pcl.validation import check
from keras_pcl.validation import raise_invalid


def conv_initializer():
    """He-normal (fan-out, untruncated), as PyTorch's `kaiming_normal_`.

    Example:

    >>> conv_initializer().get_config()["mode"]
    'fan_out'
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def check_data_format(data_format):
    """Returns `data_format`, defaulting to `keras.config.image_data_format()`.

    Args:
        data_format: `"channels_last"`, `"channels_first"` or None.

    Raises:
        ValueError: for any other value.
    """
    data_format = data_format or keras.config.image_data_format()
    return check(
        data_format in ("channels_last", "channels_first"),
        "data_format",
        data_format,
        "'channels_last' or 'channels_first'",
    )


def check_input_shape(input_shape, data_format, min_size):
    """Checks `(height, width, channels)` (or channels-first) image shapes.

    Args:
        input_shape: tuple of three ints.
        data_format: the resolved data format.
        min_size: smallest height and width the network accepts (each
            downsampling halves them).

    Returns:
        `input_shape` as a tuple.

    Raises:
        ValueError: if the shape is not three positive ints, or too small.
    """
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if shape is None or len(shape) != 3 or not all(_positive_int(d) for d in shape):
        raise_invalid(
            "input_shape",
            input_shape,
            "three positive ints, (height, width, channels) or (channels, "
            "height, width) with data_format='channels_first'",
        )
    spatial = shape[1:] if data_format == "channels_first" else shape[:2]
    if min(spatial) < min_size:
        raise_invalid(
            "input_shape",
            input_shape,
            f"an image of height and width >= {min_size} for this network",
        )
    return shape


class ImageInput(NamedTuple):
    """The checked arguments that every built-in backbone shares, and its input.

    Made by `image_input`; a backbone builds its graph from `images` with
    these settings and hands the whole tuple to `Backbone.__init__`.

    Attributes:
        images: the `keras.Input` of images, named `"images"`.
        input_shape: the checked shape of one image (a tuple).
        data_format: `"channels_last"` or `"channels_first"`.
        regularizer: the kernels' regularizer (or None).
        dtype: the `keras.DTypePolicy` of every layer.
    """

    images: object
    input_shape: tuple
    data_format: str
    regularizer: object
    dtype: object

    def global_pool(self, x):
        """`GlobalAveragePooling2D` (layer `avg_pool`): the pooled features."""
        return layers.GlobalAveragePooling2D(
            data_format=self.data_format, name="avg_pool", dtype=self.dtype
        )(x)

    def stem(self, x, filters, kernel_size, strides, **conv_kwargs):
        """Convolution, batch norm, ReLU: layers `stem_conv`, `stem_bn`, `stem_relu`."""
        x = conv2d(
            filters,
            kernel_size,
            strides,
            self.regularizer,
            self.data_format,
            "stem_conv",
            dtype=self.dtype,
            **conv_kwargs,
        )(x)
        x = batch_norm(self.data_format, "stem_bn", self.dtype)(x)
        return layers.ReLU(name="stem_relu", dtype=self.dtype)(x)


def check_depth(depth, multiple, offset, examples):
    """Checks a depth of the form `multiple * n + offset` with `n >= 1`.

    Args:
        depth: the value to check.
        multiple: the depth added by one more block per stage.
        offset: the layers outside the blocks.
        examples: a few valid depths, for the error message.

    Returns:
        `depth`.

    Raises:
        ValueError: naming `depth`, the form and the examples.

    Example:

    >>> check_depth(32, 6, 2, "8, 14, 20, 32")
    32
    """
    return check(
        isinstance(depth, int)
        and not isinstance(depth, bool)
        and depth >= multiple + offset
        and (depth - offset) % multiple == 0,
        "depth",
        depth,
        f"an int of the form {multiple}n + {offset} with n >= 1 ({examples})",
    )


def image_input(input_shape, kernel_regularizer, data_format, dtype, min_size):
    """Checks a backbone's shared arguments and makes its image input.

    Args:
        input_shape: shape of one image (see `check_input_shape`).
        kernel_regularizer: a regularizer, its name or config, or None.
        data_format: `"channels_last"`, `"channels_first"` or None (Keras'
            `image_data_format()`).
        dtype: a dtype policy (name, config or `keras.DTypePolicy`), or None
            for the global policy.
        min_size: smallest height and width the network accepts.

    Returns:
        An `ImageInput`.

    Example:

    >>> spec = image_input((32, 32, 3), None, "channels_last", "float32", 4)
    >>> spec.images.shape, spec.dtype.name
    ((None, 32, 32, 3), 'float32')
    """
    data_format = check_data_format(data_format)
    input_shape = check_input_shape(input_shape, data_format, min_size=min_size)
    return ImageInput(
        images=keras.Input(shape=input_shape, name="images"),
        input_shape=input_shape,
        data_format=data_format,
        regularizer=keras.regularizers.get(kernel_regularizer),
        dtype=keras.dtype_policies.get(dtype),
    )


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def channel_axis(data_format):
    """The channel axis of a 4D image tensor: 1 or -1."""
    return 1 if data_format == "channels_first" else -1


def conv2d(filters, kernel_size, strides, regularizer, data_format, name, **kwargs):
    """A bias-free, He-normal `Conv2D` with `padding="same"` by default.

    `**kwargs` go to `Conv2D`: `dtype`, `padding`, `use_bias`.
    """
    kwargs.setdefault("padding", "same")
    kwargs.setdefault("use_bias", False)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        kernel_initializer=conv_initializer(),
        kernel_regularizer=regularizer,
        data_format=data_format,
        name=name,
        **kwargs,
    )


def batch_norm(data_format, name, dtype=None):
    """`BatchNormalization` over the channel axis (gamma 1, beta 0)."""
    return layers.BatchNormalization(
        axis=channel_axis(data_format), name=name, dtype=dtype
    )


def residual_output(x, y, regularizer, data_format, dtype, name, stride):
    """`ReLU(y + shortcut(x))`, the end of every residual block.

    The shortcut is the identity, or a strided 1x1 convolution + batch norm
    (`{name}_shortcut_conv`, `{name}_shortcut_bn`) when the stride or the
    number of channels changes. Layers: `{name}_add`, `{name}_out`.
    """
    width = y.shape[channel_axis(data_format)]
    shortcut = x
    if stride != 1 or x.shape[channel_axis(data_format)] != width:
        shortcut = conv2d(
            width,
            1,
            stride,
            regularizer,
            data_format,
            f"{name}_shortcut_conv",
            dtype=dtype,
        )(x)
        shortcut = batch_norm(data_format, f"{name}_shortcut_bn", dtype)(shortcut)
    y = layers.Add(name=f"{name}_add", dtype=dtype)([y, shortcut])
    return layers.ReLU(name=f"{name}_out", dtype=dtype)(y)


def basic_block(
    x, width, stride, regularizer, data_format, dtype, name, pad_symmetric=False
):
    """Two 3x3 conv-BN layers with an identity or projection shortcut.

    Layers `{name}_conv1`, `_bn1`, `_relu1`, `_conv2`, `_bn2`, then
    `residual_output`'s. With `pad_symmetric` (ImageNet ResNets), a strided
    first convolution pads symmetrically (`ZeroPadding2D(1)`, `{name}_pad1`,
    then `padding="valid"`), as PyTorch does; otherwise it pads `"same"`.
    """

    def conv(filters, strides, suffix, padding="same"):
        return conv2d(
            filters,
            3,
            strides,
            regularizer,
            data_format,
            f"{name}_{suffix}",
            padding=padding,
            dtype=dtype,
        )

    if stride != 1 and pad_symmetric:
        y = layers.ZeroPadding2D(
            1, data_format=data_format, name=f"{name}_pad1", dtype=dtype
        )(x)
        y = conv(width, stride, "conv1", padding="valid")(y)
    else:
        y = conv(width, stride, "conv1")(x)
    y = batch_norm(data_format, f"{name}_bn1", dtype)(y)
    y = layers.ReLU(name=f"{name}_relu1", dtype=dtype)(y)
    y = conv(width, 1, "conv2")(y)
    y = batch_norm(data_format, f"{name}_bn2", dtype)(y)
    return residual_output(x, y, regularizer, data_format, dtype, name, stride)
