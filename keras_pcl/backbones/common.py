"""Building blocks shared by the built-in backbones.

Every built-in backbone initialises its convolutions like the reference
PyTorch code of the online-distillation papers (`kaiming_normal_`, fan-out),
keeps Keras' batch-normalisation defaults (gamma 1, beta 0) and takes the same
`input_shape`, `kernel_regularizer`, `data_format` and `dtype` arguments,
checked here. Every layer is built with the backbone's `dtype` policy.
"""

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
