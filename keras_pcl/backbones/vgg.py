"""VGG-16 with batch normalisation and a 512-512 MLP, for CIFAR.

Defined as in the online-distillation code that PCL compares with (spec
section 6): five conv blocks of 64,64 / 128,128 / 256x3 / 512x3 / 512x3
channels, each convolution 3x3 with bias, followed by batch norm and ReLU,
each block ending in 2x2 max pooling; then global average pooling (the map is
1x1 at 32x32 inputs, so this is the reference's flatten) and an MLP of two
512-unit dense layers with ReLU. The MLP ends the backbone: its 512 features
go to the classifier that `PeerCollaborativeModel` adds, which makes the
spec's "MLP 512-512-classes". The PCL split is after conv block 4
(`default_split_at = "block4_pool"`): each peer owns conv block 5 and the MLP.

Initialisation: He-normal (fan-out) convolution kernels, zero biases, BN
gamma 1 / beta 0, dense kernels from N(0, 0.01) with zero biases (as
torchvision's VGG).

Weight decay: pass `kernel_regularizer=keras.regularizers.L2(5e-4 / 2)` to
reproduce the paper's PyTorch SGD `weight_decay=5e-4` on every convolution
and dense kernel (see `docs/backbones.md`).
"""

import keras
from keras import layers

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.common import batch_norm
from keras_pcl.backbones.common import conv2d
from keras_pcl.backbones.common import image_input

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
MLP_WIDTH = 512


@keras.saving.register_keras_serializable(package="keras_pcl")
class VGG16BN(Backbone):
    """CIFAR VGG-16 with batch norm and the 512-512 MLP, as a PCL backbone.

    A functional model from images to 512 features (the output of the MLP's
    second ReLU). Its recommended PCL split is the end of conv block 4
    (`default_split_at`).

    Args:
        input_shape: shape of one image, `(height, width, channels)`, or
            `(channels, height, width)` with `data_format="channels_first"`.
            Height and width must be at least 32 (five 2x2 poolings).
        kernel_regularizer: optional regularizer for every convolution and
            dense kernel; `keras.regularizers.L2(5e-4 / 2)` reproduces the
            paper's SGD weight decay of 5e-4.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        name: model name; defaults to `vgg16_bn`.
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

    Example:

    >>> backbone = VGG16BN()
    >>> backbone.output.shape, backbone.default_split_at
    ((None, 512), 'block4_pool')
    """

    def __init__(
        self,
        input_shape=(32, 32, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        spec = image_input(
            input_shape, kernel_regularizer, data_format, dtype, min_size=32
        )
        data_format, regularizer, dtype = spec.data_format, spec.regularizer, spec.dtype
        x = spec.images
        for block, widths in enumerate(VGG16_BLOCKS, start=1):
            for i, width in enumerate(widths, start=1):
                x = conv2d(
                    width,
                    3,
                    1,
                    regularizer,
                    data_format,
                    f"block{block}_conv{i}",
                    use_bias=True,
                    dtype=dtype,
                )(x)
                x = batch_norm(data_format, f"block{block}_bn{i}", dtype)(x)
                x = layers.ReLU(name=f"block{block}_relu{i}", dtype=dtype)(x)
            x = layers.MaxPooling2D(
                2, data_format=data_format, name=f"block{block}_pool", dtype=dtype
            )(x)
        x = spec.global_pool(x)
        for i in (1, 2):
            x = layers.Dense(
                MLP_WIDTH,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                kernel_regularizer=regularizer,
                name=f"mlp_dense{i}",
                dtype=dtype,
            )(x)
            x = layers.ReLU(name=f"mlp_relu{i}", dtype=dtype)(x)
        super().__init__(
            spec,
            x,
            arguments={},
            default_split_at="block4_pool",
            name=name or "vgg16_bn",
            **kwargs,
        )


def vgg16(**kwargs):
    """The paper's CIFAR VGG-16 (batch norm, 512-512 MLP). See `VGG16BN`.

    Args:
        **kwargs: passed to `VGG16BN`.

    Example:

    >>> vgg16().count_params() > 15_000_000
    True
    """
    return VGG16BN(**kwargs)
