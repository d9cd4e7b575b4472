"""Plain CIFAR ResNets of depth 6n+2 with basic blocks (He et al., 2016).

Defined as in the online-distillation code that PCL compares with (ONE,
OKDDip): a 3x3 stem of 16 channels, three stages of `n` basic blocks with
16/32/64 channels, stride 2 at the start of stages 2 and 3 with a
1x1-convolution + batch-norm projection shortcut, global average pooling.
Depth 32 (n=5) is the paper's ResNet-32. The bottleneck ResNet-110 of the
paper's tables is a different network
(`keras_pcl.backbones.CIFARBottleneckResNet`).

Weight decay: the paper trains with PyTorch's SGD `weight_decay=5e-4`, which
adds `5e-4 * w` to every gradient before momentum. Pass
`kernel_regularizer=keras.regularizers.L2(5e-4 / 2)`: its gradient is the same
`5e-4 * w` on every convolution kernel, and it goes through momentum exactly
like PyTorch's (see `docs/backbones.md` for why the optimizer's decoupled
`weight_decay` is not the same thing).
"""

import keras
from keras import layers

from keras_pcl.backbones.common import conv_initializer

STAGE_WIDTHS = (16, 32, 64)


@keras.saving.register_keras_serializable(package="keras_pcl")
class CIFARResNet(keras.Model):
    """CIFAR ResNet of depth `6n + 2` with basic blocks, as a PCL backbone.

    A functional model from images to the pooled 64-dimensional feature
    vector. Its recommended PCL split is the end of stage 2
    (`default_split_at`), so each peer owns stage 3.

    Args:
        depth: int of the form `6n + 2` (8, 14, 20, 32, 44, 56, 110, ...).
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
        kernel_regularizer: optional regularizer for every convolution
            kernel (e.g. `keras.regularizers.L2(5e-4 / 2)` reproduces the
            paper's SGD weight decay of 5e-4 for `L = ... + wd/2 * |w|^2`).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`. TensorFlow's CPU
            convolutions support channels-last only.
        name: model name; defaults to `cifar_resnet{depth}`.

    Example:

    >>> backbone = CIFARResNet(depth=20)
    >>> backbone.output.shape
    (None, 64)
    >>> backbone.default_split_at
    'stage2_block3_out'
    """

    def __init__(
        self,
        depth=32,
        input_shape=(32, 32, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        **kwargs,
    ):
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                "`depth` must be an int of the form 6n + 2 with n >= 1 "
                f"(8, 14, 20, 32, 44, 56, ...). Received: depth={depth!r}"
            )
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}"
            )
        blocks_per_stage = (depth - 2) // 6
        regularizer = keras.regularizers.get(kernel_regularizer)
        bn_axis = 1 if data_format == "channels_first" else -1

        inputs = keras.Input(shape=input_shape, name="images")
        x = layers.Conv2D(
            STAGE_WIDTHS[0],
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=conv_initializer(),
            kernel_regularizer=regularizer,
            data_format=data_format,
            name="stem_conv",
        )(inputs)
        x = layers.BatchNormalization(axis=bn_axis, name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            for block in range(1, blocks_per_stage + 1):
                stride = 2 if (stage > 1 and block == 1) else 1
                x = basic_block(
                    x,
                    width,
                    stride,
                    regularizer,
                    data_format,
                    name=f"stage{stage}_block{block}",
                )
        outputs = layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool"
        )(x)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name or f"cifar_resnet{depth}",
            **kwargs,
        )
        self.depth = depth
        self.image_shape = tuple(input_shape)
        self.kernel_regularizer = regularizer
        self.data_format = data_format
        self.default_split_at = f"stage2_block{blocks_per_stage}_out"

    def get_config(self):
        return {
            "depth": self.depth,
            "input_shape": self.image_shape,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "data_format": self.data_format,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def basic_block(x, width, stride, regularizer, data_format, name):
    """Two 3x3 conv-BN layers with an identity or projection shortcut."""
    bn_axis = 1 if data_format == "channels_first" else -1

    def conv(filters, kernel_size, strides, suffix):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=conv_initializer(),
            kernel_regularizer=regularizer,
            data_format=data_format,
            name=f"{name}_{suffix}",
        )

    shortcut = x
    y = conv(width, 3, stride, "conv1")(x)
    y = layers.BatchNormalization(axis=bn_axis, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = conv(width, 3, 1, "conv2")(y)
    y = layers.BatchNormalization(axis=bn_axis, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[bn_axis] != width:
        shortcut = conv(width, 1, stride, "shortcut_conv")(x)
        shortcut = layers.BatchNormalization(axis=bn_axis, name=f"{name}_shortcut_bn")(
            shortcut
        )
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet20(**kwargs):
    """CIFAR ResNet-20 (3 basic blocks per stage). See `CIFARResNet`."""
    return CIFARResNet(depth=20, **kwargs)


def resnet32(**kwargs):
    """CIFAR ResNet-32 (5 basic blocks per stage), the paper's ResNet-32."""
    return CIFARResNet(depth=32, **kwargs)


def resnet56(**kwargs):
    """CIFAR ResNet-56 (9 basic blocks per stage). See `CIFARResNet`."""
    return CIFARResNet(depth=56, **kwargs)
