"""Backbones for `PeerCollaborativeModel`: functional models, images -> features."""

from keras_pcl.backbones.cifar_resnet import CIFARResNet
from keras_pcl.backbones.cifar_resnet import resnet20
from keras_pcl.backbones.cifar_resnet import resnet32
from keras_pcl.backbones.cifar_resnet import resnet56
from keras_pcl.splitting import split_candidates

__all__ = [
    "CIFARResNet",
    "resnet20",
    "resnet32",
    "resnet56",
    "split_candidates",
]
