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
convolution) but not the block outputs, like torchvision's wide bottleneck;
`keras_pcl.backbones.WideResNet` uses it for WRN-20-8.

Weight decay: pass `kernel_regularizer=keras.regularizers.L2(5e-4 / 2)` to
reproduce the paper's PyTorch SGD `weight_decay=5e-4` on the convolution
kernels (`docs/backbones.md` explains the factor 1/2 and why the optimizer's
`weight_decay` differs).
"""

import keras
from keras import layers

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.common import batch_norm
from keras_pcl.backbones.common import check_depth
from keras_pcl.backbones.common import conv2d
from keras_pcl.backbones.common import image_input
from keras_pcl.backbones.common import residual_output
from keras_pcl.validation import check_int

STAGE_PLANES = (16, 32, 64)
EXPANSION = 4


@keras.saving.register_keras_serializable(package="keras_pcl")
class CIFARBottleneckResNet(Backbone):
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
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

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
        dtype=None,
        **kwargs,
    ):
        check_depth(depth, 9, 2, "11, 20, 29, ..., 110, ...")
        check_int("width_factor", width_factor, minimum=1)
        spec = image_input(
            input_shape, kernel_regularizer, data_format, dtype, min_size=4
        )
        data_format, regularizer, dtype = spec.data_format, spec.regularizer, spec.dtype
        blocks_per_stage = (depth - 2) // 9

        x = spec.stem(spec.images, 16, 3, 1)
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
                    dtype,
                    name=f"stage{stage}_block{block}",
                )
        if name is None:
            name = f"cifar_bottleneck_resnet{depth}"
            if width_factor != 1:
                name += f"_x{width_factor}"
        super().__init__(
            spec,
            spec.global_pool(x),
            arguments={"depth": depth, "width_factor": width_factor},
            default_split_at=f"stage2_block{blocks_per_stage}_out",
            name=name,
            **kwargs,
        )


def bottleneck_block(x, planes, inner, stride, regularizer, data_format, dtype, name):
    """1x1 (inner) - 3x3 (inner, stride) - 1x1 (4 * planes), each with BN.

    The shortcut is the identity, or a strided 1x1 convolution + BN when the
    shape changes (as in the reference code, stride on the 3x3 convolution).
    """

    def conv(filters, kernel_size, strides, suffix):
        return conv2d(
            filters,
            kernel_size,
            strides,
            regularizer,
            data_format,
            f"{name}_{suffix}",
            dtype=dtype,
        )

    out_channels = planes * EXPANSION
    y = conv(inner, 1, 1, "conv1")(x)
    y = batch_norm(data_format, f"{name}_bn1", dtype)(y)
    y = layers.ReLU(name=f"{name}_relu1", dtype=dtype)(y)
    y = conv(inner, 3, stride, "conv2")(y)
    y = batch_norm(data_format, f"{name}_bn2", dtype)(y)
    y = layers.ReLU(name=f"{name}_relu2", dtype=dtype)(y)
    y = conv(out_channels, 1, 1, "conv3")(y)
    y = batch_norm(data_format, f"{name}_bn3", dtype)(y)
    return residual_output(x, y, regularizer, data_format, dtype, name, stride)


def resnet110(**kwargs):
    """The paper's ResNet-110: bottleneck blocks 12/12/12, 256 features.

    Args:
        **kwargs: passed to `CIFARBottleneckResNet` (`input_shape`,
            `kernel_regularizer`, `data_format`, `name`, `dtype`).

    Example:

    >>> resnet110().count_params()  # bottleneck blocks: not He et al.'s 1.7M
    1162224
    """
    return CIFARBottleneckResNet(depth=110, **kwargs)
