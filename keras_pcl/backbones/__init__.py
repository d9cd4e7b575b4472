"""Backbones for `PeerCollaborativeModel`: functional models, images -> features.

Built-in networks of the paper's tables (spec section 6), each a `Backbone`
(config, dtype policy and `default_split_at` owned by the base class): select
them by name with `get(name, **kwargs)` (see `names()`; `get` also takes
`resnetD` and `keras.applications` names), or build them from their
classes. Any other functional model works too; `split_candidates(model)`
lists its valid split layers and `recommended_split(model)` the start of its
last stage when known.
"""

from keras_pcl.backbones.backbone import Backbone
from keras_pcl.backbones.cifar_bottleneck_resnet import CIFARBottleneckResNet
from keras_pcl.backbones.cifar_bottleneck_resnet import resnet110
from keras_pcl.backbones.cifar_resnet import CIFARResNet
from keras_pcl.backbones.cifar_resnet import resnet20
from keras_pcl.backbones.cifar_resnet import resnet32
from keras_pcl.backbones.cifar_resnet import resnet56
from keras_pcl.backbones.densenet import CIFARDenseNet
from keras_pcl.backbones.densenet import densenet40_12
from keras_pcl.backbones.imagenet_resnet import ImageNetResNet
from keras_pcl.backbones.imagenet_resnet import resnet18
from keras_pcl.backbones.keras_hub import KerasHubBackbone
from keras_pcl.backbones.keras_hub import from_keras_hub
from keras_pcl.backbones.keras_hub import preprocessing_from_keras_hub
from keras_pcl.backbones.registry import BACKBONES
from keras_pcl.backbones.registry import builder
from keras_pcl.backbones.registry import get
from keras_pcl.backbones.registry import is_application
from keras_pcl.backbones.registry import names
from keras_pcl.backbones.vgg import VGG16BN
from keras_pcl.backbones.vgg import vgg16
from keras_pcl.backbones.wide_resnet import WideResNet
from keras_pcl.backbones.wide_resnet import wrn20_8
from keras_pcl.splitting import recommended_split
from keras_pcl.splitting import split_candidates

__all__ = [
    "KerasHubBackbone",
    "from_keras_hub",
    "preprocessing_from_keras_hub",
    "BACKBONES",
    "Backbone",
    "CIFARBottleneckResNet",
    "CIFARDenseNet",
    "CIFARResNet",
    "ImageNetResNet",
    "VGG16BN",
    "WideResNet",
    "builder",
    "densenet40_12",
    "get",
    "is_application",
    "names",
    "recommended_split",
    "resnet110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "split_candidates",
    "vgg16",
    "wrn20_8",
]
