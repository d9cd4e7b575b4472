"""CIFAR ResNets of depth 9n+2 with bottleneck blocks: the paper's ResNet-110.

Defined as in the online-distillation code that PCL compares with (ONE,
OKDDip; spec section 6): a 3x3 stem of 16 channels, three stages of `n`
bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4) of 16/32/64 inner
channels, so 64/128/256 output channels, stride 2 on the 3x3 convolution of
the first block of stages 2 and 3, a 1x1-convolution + batch-norm projection
shortcut wherever the shape changes, global average pooling. Depth 110 (n=12)
is the paper's ResNet-110; it is not the basic-block ResNet-110 of He et al.
(`CIFARResNet(depth=110)`).

`width_factor` multiplies the inner width (the 1x1 reduction and the 3x3
convolution) but not the block outputs, like torchvision's wide bottleneck; `keras_pcl.backbones.WideResNet` uses it for WRN-20-8.

Weight decay: pass `kernel_regularizer=keras.regularizers.L2(5e-4 / 2)` to
reproduce the paper's PyTorch SGD `weight_decay=5e-4` on the convolution
kernels (`docs/backbones.md` explains the factor 1/2 and why the optimizer's
`weight_decay` differs).
"""

import keras
from keras import layers

from keras_pcl.backbones.common import batch_norm
from keras_pcl.backbones.common import channel_axis
from keras_pcl.backbones.common import check_data_format
from keras_pcl.backbones.common import check_input_shape
from keras_pcl.backbones.common import conv2d

STAGE_PLANES = (16, 32, 64)
EXPANSION = 4


@keras.saving.register_keras_serializable(package="keras_pcl")
class CIFARBottleneckResNet(keras.Model):
    """CIFAR ResNet of depth `9n + 2` with bottleneck blocks, as a PCL backbone.

    A functional model from images to the pooled `256`-dimensional feature
    vector. Its recommended PCL split is the end of stage 2
    (`default_split_at`), so each peer owns stage 3.

    Args:
        depth: int of the form `9n + 2` (11, 20, 29, ..., 110, ...).
        width_factor: int >= 1, multiplies the inner width of every block
            (the 3x3 convolution and the 1x1 reduction). Defaults to 1.
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
        kernel_regularizer: optional regularizer for every convolution
            kernel; `keras.regularizers.L2(5e-4 / 2)` reproduces the paper's
            SGD weight decay of 5e-4.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        name: model name; defaults to `cifar_bottleneck_resnet{depth}` (or
            `..._x{width_factor}`).

    Example:

    >>> backbone = CIFARBottleneckResNet(depth=110)
    >>> backbone.output.shape
    (None, 256)
    >>> backbone.default_split_at
    'stage2_block12_out'
    """

    def __init__(
        self,
        depth=110,
        width_factor=1,
        input_shape=(32, 32, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        **kwargs,
    ):
        if (
            isinstance(depth, bool)
            or not isinstance(depth, int)
            or depth < 11
            or (depth - 2) % 9 != 0
        ):
            raise ValueError(
                "`depth` must be an int of the form 9n + 2 with n >= 1 "
                f"(11, 20, 29, ..., 110, ...). Received: depth={depth!r}"
            )
        if (
            isinstance(width_factor, bool)
            or not isinstance(width_factor, int)
            or width_factor < 1
        ):
            raise ValueError(
                "`width_factor` must be an int >= 1. "
                f"Received: width_factor={width_factor!r}"
            )
        data_format = check_data_format(data_format)
        input_shape = check_input_shape(input_shape, data_format, min_size=4)
        blocks_per_stage = (depth - 2) // 9
        regularizer = keras.regularizers.get(kernel_regularizer)

        inputs = keras.Input(shape=input_shape, name="images")
        x = conv2d(16, 3, 1, regularizer, data_format, "stem_conv")(inputs)
        x = batch_norm(data_format, "stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        for stage, planes in enumerate(STAGE_PLANES, start=1):
            for block in range(1, blocks_per_stage + 1):
                stride = 2 if (stage > 1 and block == 1) else 1
                x = bottleneck_block(
                    x,
                    planes,
                    planes * width_factor,
                    stride,
                    regularizer,
                    data_format,
                    name=f"stage{stage}_block{block}",
                )
        outputs = layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool"
        )(x)
        if name is None:
            name = f"cifar_bottleneck_resnet{depth}"
            if width_factor != 1:
                name += f"_x{width_factor}"
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.depth = depth
        self.width_factor = width_factor
        self.image_shape = input_shape
        self.kernel_regularizer = regularizer
        self.data_format = data_format
        self.default_split_at = f"stage2_block{blocks_per_stage}_out"

    def get_config(self):
        return {
            "depth": self.depth,
            "width_factor": self.width_factor,
            "input_shape": self.image_shape,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "data_format": self.data_format,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def bottleneck_block(x, planes, inner, stride, regularizer, data_format, name):
    """1x1 (inner) - 3x3 (inner, stride) - 1x1 (4 * planes), each with BN.

    The shortcut is the identity, or a strided 1x1 convolution + BN when the
    shape changes (as in the reference code, stride on the 3x3 convolution).
    """
    axis = channel_axis(data_format)
    out_channels = planes * EXPANSION
    y = conv2d(inner, 1, 1, regularizer, data_format, f"{name}_conv1")(x)
    y = batch_norm(data_format, f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = conv2d(inner, 3, stride, regularizer, data_format, f"{name}_conv2")(y)
    y = batch_norm(data_format, f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = conv2d(out_channels, 1, 1, regularizer, data_format, f"{name}_conv3")(y)
    y = batch_norm(data_format, f"{name}_bn3")(y)
    shortcut = x
    if stride != 1 or x.shape[axis] != out_channels:
        shortcut = conv2d(
            out_channels, 1, stride, regularizer, data_format, f"{name}_shortcut_conv"
        )(x)
        shortcut = batch_norm(data_format, f"{name}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet110(**kwargs):
    """The paper's ResNet-110: bottleneck blocks 12/12/12, 256 features.

    Args:
        **kwargs: passed to `CIFARBottleneckResNet` (`input_shape`,
            `kernel_regularizer`, `data_format`, `name`).

    Example:

    >>> resnet110().count_params()  # bottleneck blocks: not He et al.'s 1.7M
    1162224
    """
    return CIFARBottleneckResNet(depth=110, **kwargs)
