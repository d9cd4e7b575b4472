"""ImageNet ResNet-18 (and ResNet-34), torchvision's definition.

Spec section 6: a 7x7 stride-2 stem of 64 channels with BN-ReLU and 3x3
stride-2 max pooling, four stages of basic blocks (2/2/2/2 for ResNet-18,
3/4/6/3 for ResNet-34) of 64/128/256/512 channels, stride 2 at the start of
stages 2-4 with a 1x1-convolution + BN projection shortcut, global average
pooling to 512 features. Strided layers pad explicitly, symmetrically, like
PyTorch (`ZeroPadding2D` then `padding="valid"`) rather than Keras' `"same"`,
which pads only at the bottom/right for even inputs: the sampling grid is
torchvision's. With a 1000-class classifier the network has torchvision's
11,689,512 (ResNet-18) parameters, plus Keras' BN moving statistics.

The PCL split is the end of stage 3 (`default_split_at = "stage3_block2_out"`
for ResNet-18): each peer owns stage 4.

Weight decay: the paper uses PyTorch SGD `weight_decay=1e-4` on ImageNet;
pass `kernel_regularizer=keras.regularizers.L2(1e-4 / 2)` (see
`docs/backbones.md`).
"""

import keras
from keras import layers

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.common import basic_block
from keras_pcl.backbones.common import image_input
from keras_pcl.validation import check_choice

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


@keras.saving.register_keras_serializable(package="keras_pcl")
class ImageNetResNet(Backbone):
    """ImageNet ResNet-18/34 (basic blocks), as a PCL backbone.

    A functional model from images to the pooled 512-dimensional feature
    vector. Its recommended PCL split is the end of stage 3
    (`default_split_at`), so each peer owns stage 4.

    Args:
        depth: 18 or 34.
        input_shape: shape of one image; `(224, 224, 3)` by default. Any
            height and width >= 32 work (the network downsamples 32x).
        kernel_regularizer: optional regularizer for every convolution
            kernel; `keras.regularizers.L2(1e-4 / 2)` reproduces the paper's
            ImageNet SGD weight decay of 1e-4.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        name: model name; defaults to `resnet{depth}`.
        dtype: dtype policy of every layer (e.g. `"float64"`,
            `"mixed_bfloat16"` or a `keras.DTypePolicy`); defaults to
            `keras.config.dtype_policy()`.

    Example:

    >>> backbone = ImageNetResNet(depth=18)
    >>> backbone.output.shape, backbone.default_split_at
    ((None, 512), 'stage3_block2_out')
    """

    def __init__(
        self,
        depth=18,
        input_shape=(224, 224, 3),
        kernel_regularizer=None,
        data_format=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        check_choice("depth", depth, sorted(BLOCKS))
        spec = image_input(
            input_shape, kernel_regularizer, data_format, dtype, min_size=32
        )
        data_format, regularizer, dtype = spec.data_format, spec.regularizer, spec.dtype

        def pad(padding, name):
            return layers.ZeroPadding2D(
                padding, data_format=data_format, name=name, dtype=dtype
            )

        x = spec.stem(pad(3, "stem_pad")(spec.images), 64, 7, 2, padding="valid")
        # Zero padding before max pooling equals PyTorch's -inf padding here:
        # the inputs are ReLU outputs, >= 0.
        x = pad(1, "stem_pool_pad")(x)
        x = layers.MaxPooling2D(
            3, strides=2, data_format=data_format, name="stem_pool", dtype=dtype
        )(x)
        for stage, (blocks, width) in enumerate(
            zip(BLOCKS[depth], STAGE_WIDTHS), start=1
        ):
            for block in range(1, blocks + 1):
                stride = 2 if (stage > 1 and block == 1) else 1
                x = basic_block(
                    x,
                    width,
                    stride,
                    regularizer,
                    data_format,
                    dtype,
                    name=f"stage{stage}_block{block}",
                    pad_symmetric=True,
                )
        super().__init__(
            spec,
            spec.global_pool(x),
            arguments={"depth": depth},
            default_split_at=f"stage3_block{BLOCKS[depth][2]}_out",
            name=name or f"resnet{depth}",
            **kwargs,
        )


def resnet18(**kwargs):
    """ImageNet ResNet-18 (224x224 by default). See `ImageNetResNet`.

    Args:
        **kwargs: passed to `ImageNetResNet`.

    Example:

    >>> resnet18(input_shape=(64, 64, 3)).output.shape
    (None, 512)
    """
    return ImageNetResNet(depth=18, **kwargs)
