"""keras-pcl: Peer Collaborative Learning for Keras 3."""

from keras_pcl import augmentation
from keras_pcl import backbones
from keras_pcl import callbacks
from keras_pcl import data
from keras_pcl import export
from keras_pcl import losses
from keras_pcl.model import PeerCollaborativeModel

__version__ = "0.1.0"

__all__ = [
    "PeerCollaborativeModel",
    "augmentation",
    "backbones",
    "callbacks",
    "data",
    "export",
    "losses",
]
