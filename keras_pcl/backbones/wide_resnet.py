"""WRN-20-8: the wide bottleneck CIFAR ResNet of the paper's tables.

Spec section 6: bottleneck blocks 2/2/2 (depth 9 * 2 + 2 = 20) whose inner
width is 8x the usual (torchvision-style wide bottleneck): 1x1 reductions and
3x3 convolutions of 128/256/512 channels, block outputs of 64/128/256
channels, a 3x3 stem of 16, global average pooling to 256 features. It is
`CIFARBottleneckResNet(depth=20, width_factor=8)` under its own name.

Weight decay: pass `kernel_regularizer=keras.regularizers.L2(5e-4 / 2)` to
reproduce the paper's PyTorch SGD `weight_decay=5e-4` (see
`docs/backbones.md`).
"""

import keras

from keras_pcl.backbones.cifar_bottleneck_resnet import CIFARBottleneckResNet


@keras.saving.register_keras_serializable(package="keras_pcl")
class WideResNet(CIFARBottleneckResNet):
    """Wide bottleneck CIFAR ResNet (WRN-depth-width), as a PCL backbone.

    The recommended PCL split (`default_split_at`) is the end of stage 2, so
    each peer owns stage 3.

    Args:
        depth: int of the form `9n + 2`; 20 for WRN-20-8.
        width_factor: int >= 1, the widening of the inner convolutions;
            8 for WRN-20-8.
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
        kernel_regularizer: optional regularizer for every convolution
            kernel, e.g. `keras.regularizers.L2(5e-4 / 2)`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        name: model name; defaults to `wrn{depth}_{width_factor}`.
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

    Example:

    >>> backbone = WideResNet()
    >>> backbone.name, backbone.output.shape
    ('wrn20_8', (None, 256))
    """

    def __init__(
        self,
        depth=20,
        width_factor=8,
        input_shape=(32, 32, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        if name is None and isinstance(depth, int) and isinstance(width_factor, int):
            name = f"wrn{depth}_{width_factor}"
        super().__init__(
            depth=depth,
            width_factor=width_factor,
            input_shape=input_shape,
            kernel_regularizer=kernel_regularizer,
            data_format=data_format,
            name=name,
            dtype=dtype,
            **kwargs,
        )


def wrn20_8(**kwargs):
    """WRN-20-8 of the paper's tables. See `WideResNet`.

    Args:
        **kwargs: passed to `WideResNet` (`input_shape`,
            `kernel_regularizer`, `data_format`, `name`, `dtype`).

    Example:

    >>> wrn20_8().default_split_at
    'stage2_block2_out'
    """
    return WideResNet(depth=20, width_factor=8, **kwargs)
