"""Building blocks shared by the built-in backbones.

Every built-in backbone initialises its convolutions like the reference
PyTorch code of the online-distillation papers (`kaiming_normal_`, fan-out),
keeps Keras' batch-normalisation defaults (gamma 1, beta 0) and takes the same
`input_shape`, `kernel_regularizer` and `data_format` arguments, checked here.
"""

import keras
from keras import layers


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
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


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
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise ValueError(
            "`input_shape` must be three positive ints, (height, width, "
            "channels) or (channels, height, width) with "
            f"data_format='channels_first'. Received: input_shape={input_shape!r}"
        )
    spatial = shape[1:] if data_format == "channels_first" else shape[:2]
    if min(spatial) < min_size:
        raise ValueError(
            f"`input_shape` must have height and width >= {min_size} for "
            f"this network. Received: input_shape={input_shape!r}"
        )
    return shape


def channel_axis(data_format):
    """The channel axis of a 4D image tensor: 1 or -1."""
    return 1 if data_format == "channels_first" else -1


def conv2d(filters, kernel_size, strides, regularizer, data_format, name, **kwargs):
    """A bias-free, He-normal `Conv2D` with `padding="same"` by default."""
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


def batch_norm(data_format, name):
    """`BatchNormalization` over the channel axis (gamma 1, beta 0)."""
    return layers.BatchNormalization(axis=channel_axis(data_format), name=name)
