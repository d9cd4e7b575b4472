"""keras-pcl: Peer Collaborative Learning for Keras 3."""

import importlib
import os
import sys

if os.path.basename(sys.argv[0]) == "keras-pcl":
    # The `keras-pcl` command: TensorFlow is imported first, without its
    # native start-up lines (Keras imports it on every backend). A library
    # import leaves TensorFlow's output alone.
    from keras_pcl.cli import quiet_tensorflow_import

    quiet_tensorflow_import()

from keras_pcl import allocator
from keras_pcl import augmentation
from keras_pcl import backbones
from keras_pcl import baselines
from keras_pcl import callbacks
from keras_pcl import export
from keras_pcl import losses
from keras_pcl import threads
from keras_pcl.model import PeerCollaborativeModel

__version__ = "0.1.0"

__all__ = [
    "PeerCollaborativeModel",
    "allocator",
    "augmentation",
    "backbones",
    "baselines",
    "callbacks",
    "data",
    "export",
    "losses",
    "threads",
]


def __getattr__(name):
    # `keras_pcl.data` (tf.data pipelines) imports TensorFlow; it is loaded
    # on first use so that the models train on JAX or PyTorch in an
    # environment without TensorFlow.
    if name == "data":
        return importlib.import_module("keras_pcl.data")
    raise AttributeError(f"module 'keras_pcl' has no attribute {name!r}")
