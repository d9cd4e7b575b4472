"""keras-pcl: Peer Collaborative Learning for Keras 3."""

import importlib

from keras_pcl import augmentation
from keras_pcl import backbones
from keras_pcl import baselines
from keras_pcl import callbacks
from keras_pcl import export
from keras_pcl import losses
from keras_pcl import speedups
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
    "speedups",
]


def __getattr__(name):
    # `keras_pcl.data` (tf.data pipelines) imports TensorFlow; it is loaded
    # on first use so that the models train on JAX or PyTorch in an
    # environment without TensorFlow.
    if name == "data":
        return importlib.import_module("keras_pcl.data")
    if name in ("allocator", "threads"):
        # Process-wide settings are not the library's: scripts call them.
        raise AttributeError(
            f"`keras_pcl.{name}` moved to `keras_pcl.process` (settings for "
            "the script that owns the process: `import keras_pcl.process`, "
            "then `keras_pcl.process.configure(num_branches)`)."
        )
    raise AttributeError(f"module 'keras_pcl' has no attribute {name!r}")
