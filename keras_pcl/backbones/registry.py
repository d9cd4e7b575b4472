"""Built-in backbones by name, for scripts and configuration files.

The names are those of the paper's tables (spec section 6). `resnet20`,
`resnet32` and `resnet56` are the plain 6n+2 CIFAR ResNets with basic blocks;
`resnet110` is the paper's bottleneck ResNet-110 (the basic-block ResNet-110
of He et al. is `CIFARResNet(depth=110)`); `resnet18` is the ImageNet one.
"""

import difflib

from keras_pcl.backbones.cifar_bottleneck_resnet import resnet110
from keras_pcl.backbones.cifar_resnet import resnet20
from keras_pcl.backbones.cifar_resnet import resnet32
from keras_pcl.backbones.cifar_resnet import resnet56
from keras_pcl.backbones.densenet import densenet40_12
from keras_pcl.backbones.imagenet_resnet import resnet18
from keras_pcl.backbones.vgg import vgg16
from keras_pcl.backbones.wide_resnet import wrn20_8

_BUILDERS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "wrn20_8": wrn20_8,
    "vgg16": vgg16,
    "densenet40_12": densenet40_12,
    "resnet18": resnet18,
}

BACKBONES = tuple(_BUILDERS)


def names():
    """The names that `get` accepts, in the order of the docs' table.

    Example:

    >>> names()[:3]
    ['resnet20', 'resnet32', 'resnet56']
    """
    return list(BACKBONES)


def get(name, /, **kwargs):
    """Builds the built-in backbone called `name`.

    Args:
        name: one of `names()`: `"resnet20"`, `"resnet32"`, `"resnet56"`,
            `"resnet110"` (bottleneck), `"wrn20_8"`, `"vgg16"` (batch norm,
            512-512 MLP), `"densenet40_12"` (BC), `"resnet18"` (ImageNet).
        **kwargs: passed to the backbone's constructor, e.g. `input_shape`,
            `kernel_regularizer`, `data_format`, `name` (the model's name:
            `name` above is positional-only).

    Returns:
        A functional `keras.Model` from images to features, with a
        `default_split_at` attribute.

    Raises:
        ValueError: if `name` is not a built-in backbone.

    Example:

    >>> import keras
    >>> backbone = get("resnet32", kernel_regularizer=keras.regularizers.L2(2.5e-4))
    >>> backbone.default_split_at
    'stage2_block5_out'
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        close = difflib.get_close_matches(str(name).lower(), BACKBONES, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"`name` must be one of the built-in backbones {list(BACKBONES)}.{hint} "
            f"Received: name={name!r}"
        )
    return _BUILDERS[name](**kwargs)
