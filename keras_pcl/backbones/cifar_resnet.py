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

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.common import basic_block
from keras_pcl.backbones.common import check_depth
from keras_pcl.backbones.common import image_input

STAGE_WIDTHS = (16, 32, 64)


@keras.saving.register_keras_serializable(package="keras_pcl")
class CIFARResNet(Backbone):
    """CIFAR ResNet of depth `6n + 2` with basic blocks, as a PCL backbone.

    A functional model from images to the pooled 64-dimensional feature
    vector. Its recommended PCL split is the end of stage 2
    (`default_split_at`), so each peer owns stage 3.

    Args:
        depth: int of the form `6n + 2` (8, 14, 20, 32, 44, 56, 110, ...).
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
            Height and width must be at least 4 (two stride-2 stages).
        kernel_regularizer: optional regularizer for every convolution
            kernel (e.g. `keras.regularizers.L2(5e-4 / 2)` reproduces the
            paper's SGD weight decay of 5e-4 for `L = ... + wd/2 * |w|^2`).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`. TensorFlow's CPU
            convolutions support channels-last only.
        name: model name; defaults to `cifar_resnet{depth}`.
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

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
        dtype=None,
        **kwargs,
    ):
        check_depth(depth, 6, 2, "8, 14, 20, 32, 44, 56, ...")
        spec = image_input(
            input_shape, kernel_regularizer, data_format, dtype, min_size=4
        )
        data_format, regularizer, dtype = spec.data_format, spec.regularizer, spec.dtype
        blocks_per_stage = (depth - 2) // 6

        x = spec.stem(spec.images, STAGE_WIDTHS[0], 3, 1)
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            for block in range(1, blocks_per_stage + 1):
                stride = 2 if (stage > 1 and block == 1) else 1
                x = basic_block(
                    x,
                    width,
                    stride,
                    regularizer,
                    data_format,
                    dtype,
                    name=f"stage{stage}_block{block}",
                )
        super().__init__(
            spec,
            spec.global_pool(x),
            arguments={"depth": depth},
            default_split_at=f"stage2_block{blocks_per_stage}_out",
            name=name or f"cifar_resnet{depth}",
            **kwargs,
        )


def resnet20(**kwargs):
    """CIFAR ResNet-20 (3 basic blocks per stage). See `CIFARResNet`."""
    return CIFARResNet(depth=20, **kwargs)


def resnet32(**kwargs):
    """CIFAR ResNet-32 (5 basic blocks per stage), the paper's ResNet-32."""
    return CIFARResNet(depth=32, **kwargs)


def resnet56(**kwargs):
    """CIFAR ResNet-56 (9 basic blocks per stage). See `CIFARResNet`."""
    return CIFARResNet(depth=56, **kwargs)
