"""keras-pcl: Peer Collaborative Learning for Keras 3."""

import importlib

from keras_pcl import augmentation
from keras_pcl import backbones
from keras_pcl import baselines
from keras_pcl import callbacks
from keras_pcl import export
from keras_pcl import losses
from keras_pcl.model import PeerCollaborativeModel

__version__ = "0.1.0"

__all__ = [
    "PeerCollaborativeModel",
    "augmentation",
    "backbones",
    "baselines",
    "callbacks",
    "data",
    "export",
    "losses",
]


def __getattr__(name):
    # `keras_pcl.data` (tf.data pipelines) imports TensorFlow; it is loaded
    # on first use so that the models train on JAX or PyTorch in an
    # environment without TensorFlow.
    if name == "data":
        return importlib.import_module("keras_pcl.data")
    raise AttributeError(f"module 'keras_pcl' has no attribute {name!r}")
