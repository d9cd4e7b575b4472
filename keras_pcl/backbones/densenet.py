"""DenseNet-BC for CIFAR: the paper's DenseNet-40-12.

Defined as in the online-distillation code that PCL compares with (spec
section 6, BC variant = bottleneck layers + compression 0.5): a 3x3 stem of
`2 * growth_rate` channels; three dense blocks of `n = (depth - 4) / 6`
layers, each layer BN-ReLU-1x1 conv (`4 * growth_rate`)-BN-ReLU-3x3 conv
(`growth_rate`) whose output is concatenated to its input; between blocks a
transition BN-ReLU-1x1 conv (half the channels, rounded down)-2x2 average
pooling; after the last block BN-ReLU and global average pooling. Every
convolution is bias-free. DenseNet-40-12 has 24 -> 96 -> 48 -> 120 -> 60 ->
132 channels, so 132 features.

The PCL split is after the second transition (`default_split_at =
"transition2_pool"`): each peer owns dense block 3, the final BN-ReLU and
the pooling.

Weight decay: pass `kernel_regularizer=keras.regularizers.L2(5e-4 / 2)` to
reproduce the paper's PyTorch SGD `weight_decay=5e-4` on every convolution
kernel (see `docs/backbones.md`).
"""

import keras
from keras import layers

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.common import batch_norm
from keras_pcl.backbones.common import channel_axis
from keras_pcl.backbones.common import check_depth
from keras_pcl.backbones.common import conv2d
from keras_pcl.backbones.common import image_input
from keras_pcl.validation import check_int

BOTTLENECK_EXPANSION = 4
COMPRESSION = 0.5


@keras.saving.register_keras_serializable(package="keras_pcl")
class CIFARDenseNet(Backbone):
    """CIFAR DenseNet-BC of depth `6n + 4`, as a PCL backbone.

    A functional model from images to the pooled feature vector. Its
    recommended PCL split is the end of the second transition
    (`default_split_at`), so each peer owns dense block 3.

    Args:
        depth: int of the form `6n + 4` (10, 16, ..., 40, ..., 100, ...).
        growth_rate: int >= 1, channels added by each dense layer.
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
        kernel_regularizer: optional regularizer for every convolution
            kernel; `keras.regularizers.L2(5e-4 / 2)` reproduces the paper's
            SGD weight decay of 5e-4.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        name: model name; defaults to `densenet{depth}_{growth_rate}`.
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

    Example:

    >>> backbone = CIFARDenseNet(depth=40, growth_rate=12)
    >>> backbone.output.shape, backbone.default_split_at
    ((None, 132), 'transition2_pool')
    """

    def __init__(
        self,
        depth=40,
        growth_rate=12,
        input_shape=(32, 32, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        check_depth(depth, 6, 4, "10, 16, ..., 40, ...")
        check_int("growth_rate", growth_rate, minimum=1)
        spec = image_input(
            input_shape, kernel_regularizer, data_format, dtype, min_size=4
        )
        data_format, regularizer, dtype = spec.data_format, spec.regularizer, spec.dtype
        layers_per_block = (depth - 4) // 6
        axis = channel_axis(data_format)

        def conv(filters, kernel_size, name):
            return conv2d(
                filters, kernel_size, 1, regularizer, data_format, name, dtype=dtype
            )

        x = conv(2 * growth_rate, 3, "stem_conv")(spec.images)
        for block in (1, 2, 3):
            for i in range(1, layers_per_block + 1):
                x = dense_layer(
                    x,
                    growth_rate,
                    regularizer,
                    data_format,
                    dtype,
                    name=f"block{block}_layer{i}",
                )
            if block < 3:
                channels = int(x.shape[axis] * COMPRESSION)
                prefix = f"transition{block}"
                x = batch_norm(data_format, f"{prefix}_bn", dtype)(x)
                x = layers.ReLU(name=f"{prefix}_relu", dtype=dtype)(x)
                x = conv(channels, 1, f"{prefix}_conv")(x)
                x = layers.AveragePooling2D(
                    2, data_format=data_format, name=f"{prefix}_pool", dtype=dtype
                )(x)
        x = batch_norm(data_format, "final_bn", dtype)(x)
        x = layers.ReLU(name="final_relu", dtype=dtype)(x)
        super().__init__(
            spec,
            spec.global_pool(x),
            arguments={"depth": depth, "growth_rate": growth_rate},
            default_split_at="transition2_pool",
            name=name or f"densenet{depth}_{growth_rate}",
            **kwargs,
        )


def dense_layer(x, growth_rate, regularizer, data_format, dtype, name):
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, concatenated after its input."""

    def conv(filters, kernel_size, suffix):
        return conv2d(
            filters,
            kernel_size,
            1,
            regularizer,
            data_format,
            f"{name}_{suffix}",
            dtype=dtype,
        )

    y = batch_norm(data_format, f"{name}_bn1", dtype)(x)
    y = layers.ReLU(name=f"{name}_relu1", dtype=dtype)(y)
    y = conv(BOTTLENECK_EXPANSION * growth_rate, 1, "conv1")(y)
    y = batch_norm(data_format, f"{name}_bn2", dtype)(y)
    y = layers.ReLU(name=f"{name}_relu2", dtype=dtype)(y)
    y = conv(growth_rate, 3, "conv2")(y)
    return layers.Concatenate(
        axis=channel_axis(data_format), name=f"{name}_concat", dtype=dtype
    )([x, y])


def densenet40_12(**kwargs):
    """The paper's DenseNet-40-12 (BC). See `CIFARDenseNet`.

    Args:
        **kwargs: passed to `CIFARDenseNet`.

    Example:

    >>> densenet40_12().output.shape
    (None, 132)
    """
    return CIFARDenseNet(depth=40, growth_rate=12, **kwargs)
