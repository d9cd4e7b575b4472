"""Backbones by name: the one place where a backbone name is resolved.

Three kinds of names, tried in this order:

* the paper's networks (spec section 6), `names()`: `resnet20`, `resnet32`
  and `resnet56` are the plain 6n+2 CIFAR ResNets with basic blocks;
  `resnet110` is the paper's bottleneck ResNet-110 (the basic-block
  ResNet-110 of He et al. is `CIFARResNet(depth=110)`); `resnet18` is the
  ImageNet one;
* `resnetD` for any other depth D = 6n + 2 >= 8: `CIFARResNet(depth=D)`
  (e.g. `resnet8`, the CPU benchmarks' network);
* a `keras.applications` constructor (`MobileNetV2`, `ResNet50`, ...):
  see `keras_pcl.backbones.applications`.

`keras_pcl.training` (`TrainConfig.backbone`, `keras-pcl train
--backbone`) resolves its names here too.
"""

import difflib
import re

from keras_pcl import validation
from keras_pcl.backbones import applications
from keras_pcl.backbones.cifar_bottleneck_resnet import resnet110
from keras_pcl.backbones.cifar_resnet import CIFARResNet
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
    """The paper's networks that `get` accepts, in the order of the docs' table.

    `get` also takes `resnetD` (D = 6n + 2) and `keras.applications` names.

    Example:

    >>> names()[:3]
    ['resnet20', 'resnet32', 'resnet56']
    """
    return list(BACKBONES)


def _cifar_resnet_depth(name):
    match = re.fullmatch(r"resnet(\d+)", name)
    if match and int(match.group(1)) >= 8 and (int(match.group(1)) - 2) % 6 == 0:
        return int(match.group(1))
    return None


def is_application(name):
    """Whether `get(name)` builds a `keras.applications` network.

    Such a backbone also takes `weights` (None or `"imagenet"`) and `alpha`
    (the MobileNets' width), and has a family `preprocess_input`
    (`keras_pcl.backbones.applications.application_preprocessing`).
    """
    return (
        isinstance(name, str)
        and name not in _BUILDERS
        and _cifar_resnet_depth(name) is None
        and applications.is_application(name)
    )


def builder(name, argument="name"):
    """The function `(**kwargs) -> backbone` that `get(name, ...)` calls.

    Resolving the name first lets a configuration be checked before any
    network is built.

    Args:
        name: a backbone name (see the module docstring).
        argument: the argument's name in the error message (e.g.
            `"backbone"` for `TrainConfig.backbone`).

    Raises:
        ValueError: if `name` is not a backbone name, with the closest ones.
    """
    if isinstance(name, str):
        if name in _BUILDERS:
            return _BUILDERS[name]
        depth = _cifar_resnet_depth(name)
        if depth is not None:
            return lambda **kwargs: CIFARResNet(depth=depth, **kwargs)
        if applications.is_application(name):
            return lambda **kwargs: applications.build_application(name, **kwargs)
    known = list(BACKBONES) + applications.application_names()
    close = difflib.get_close_matches(str(name), known, n=3)
    close = close or difflib.get_close_matches(str(name).lower(), BACKBONES, n=3)
    validation.raise_invalid(
        argument,
        name,
        f"one of the built-in backbones {list(BACKBONES)}, 'resnetD' with "
        "D = 6n + 2 (e.g. 'resnet8') or a keras.applications name (e.g. "
        "'MobileNetV2')",
        hint=f"Did you mean {close}?" if close else "",
    )


def get(name, /, **kwargs):
    """Builds the backbone called `name`.

    Args:
        name: one of `names()` (`"resnet20"`, `"resnet32"`, `"resnet56"`,
            `"resnet110"` (bottleneck), `"wrn20_8"`, `"vgg16"` (batch norm,
            512-512 MLP), `"densenet40_12"` (BC), `"resnet18"` (ImageNet)),
            `"resnetD"` (a CIFAR ResNet of depth D = 6n + 2), or a
            `keras.applications` name such as `"MobileNetV2"` (built with
            `include_top=False, pooling="avg"`).
        **kwargs: passed to the backbone's constructor, e.g. `input_shape`,
            `kernel_regularizer`, `data_format`, `name` (the model's name:
            `name` above is positional-only); for a keras.applications
            backbone, `input_shape`, `kernel_regularizer`, `weights` and
            `alpha`.

    Returns:
        A functional `keras.Model` from images to features (the built-in
        ones with a `default_split_at` attribute).

    Raises:
        ValueError: if `name` is none of these.

    Example:

    >>> import keras
    >>> backbone = get("resnet32", kernel_regularizer=keras.regularizers.L2(2.5e-4))
    >>> backbone.default_split_at
    'stage2_block5_out'
    """
    return builder(name)(**kwargs)
