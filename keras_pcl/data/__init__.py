"""Input pipelines for PCL: CIFAR-10/100, ImageNet and image folders.

Every loader returns a `DataSplits` of `tf.data.Dataset`s (training and a
class-balanced validation split held out from training) plus the class
names. Pipelines yield raw uint8 pixels, normalised inside the model by its
`preprocessing` layer (`normalization_layer`). Training augmentation runs in
the model (default) or on the host (`num_views=model.num_peers`: a tuple of
independently augmented views per example). See docs/data.md.
"""

from keras_pcl.data.augment import multi_view
from keras_pcl.data.augment import pad_crop_flip
from keras_pcl.data.augment import random_resized_crop_flip
from keras_pcl.data.augment import resize_center_crop
from keras_pcl.data.augment import strong_policy
from keras_pcl.data.augment import view_function
from keras_pcl.data.datasets import cifar10
from keras_pcl.data.datasets import cifar100
from keras_pcl.data.datasets import imagenet2012
from keras_pcl.data.digits import digits
from keras_pcl.data.digits import digits_augmentation
from keras_pcl.data.folders import FolderListing
from keras_pcl.data.folders import image_folder
from keras_pcl.data.folders import list_image_folder
from keras_pcl.data.normalization import CIFAR10_MEAN
from keras_pcl.data.normalization import CIFAR10_STD
from keras_pcl.data.normalization import CIFAR100_MEAN
from keras_pcl.data.normalization import CIFAR100_STD
from keras_pcl.data.normalization import IMAGENET_MEAN
from keras_pcl.data.normalization import IMAGENET_STD
from keras_pcl.data.normalization import compute_mean_std
from keras_pcl.data.normalization import normalization_layer
from keras_pcl.data.pipeline import DataSplits
from keras_pcl.data.splits import balanced_split

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DataSplits",
    "FolderListing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "balanced_split",
    "cifar10",
    "cifar100",
    "compute_mean_std",
    "digits",
    "digits_augmentation",
    "image_folder",
    "imagenet2012",
    "list_image_folder",
    "multi_view",
    "normalization_layer",
    "pad_crop_flip",
    "random_resized_crop_flip",
    "resize_center_crop",
    "strong_policy",
    "view_function",
]
