"""Per-channel mean and standard deviation, and the layer that applies them.

The input pipelines yield raw uint8 pixels; normalisation happens inside the
model, as its `preprocessing` layer, so the deployed network takes raw
images too. All statistics here are in pixel units (0-255), because that is
what the layer receives.

The constants are the usual published values (fractions of 255 in most
code bases, times 255 here): CIFAR-10 and CIFAR-100 computed over their
50,000 training images (population standard deviation over all pixels), and
ImageNet's from the torchvision / Inception reference pipelines.
"""

import numpy as np

# CIFAR-10 training set: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
# 0.2616). (The std (0.2023, 0.1994, 0.2010) found in many repositories is
# the mean of per-image stds, not the dataset std.)
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)
# CIFAR-100 training set: mean (0.5071, 0.4865, 0.4409), std (0.2673,
# 0.2564, 0.2762).
CIFAR100_MEAN = (129.304, 124.070, 112.434)
CIFAR100_STD = (68.170, 65.392, 70.418)
# ImageNet (ILSVRC-2012): mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

STATISTICS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
}


def normalization_layer(statistics, name="normalization"):
    """The `preprocessing` layer that standardises raw pixels per channel.

    Args:
        statistics: `"cifar10"`, `"cifar100"`, `"imagenet2012"` (the
            constants of this module), or a `(mean, std)` pair of
            per-channel sequences in pixel units, e.g. from
            `compute_mean_std`.
        name: the layer's name.

    Returns:
        A built `keras.layers.Normalization` computing
        `(pixels - mean) / std` over the last axis, for
        `PeerCollaborativeModel(preprocessing=...)`.

    Raises:
        ValueError: for an unknown name, mean and std of different lengths,
            or a std that is not positive.

    Example:

    ```python
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=10,
        preprocessing=keras_pcl.data.normalization_layer("cifar10"),
    )
    ```
    """
    import keras

    if isinstance(statistics, str):
        if statistics not in STATISTICS:
            raise ValueError(
                f"Unknown `statistics` name; expected one of "
                f"{sorted(STATISTICS)} or a (mean, std) pair. "
                f"Received: statistics={statistics!r}"
            )
        mean, std = STATISTICS[statistics]
    else:
        try:
            mean, std = statistics
        except (TypeError, ValueError):
            raise ValueError(
                "`statistics` must be a dataset name or a (mean, std) pair "
                f"of per-channel sequences. Received: statistics={statistics!r}"
            ) from None
    mean = np.asarray(mean, dtype="float32").reshape(-1)
    std = np.asarray(std, dtype="float32").reshape(-1)
    if mean.shape != std.shape or not np.all(std > 0):
        raise ValueError(
            "`statistics` must hold one mean and one positive std per "
            f"channel. Received: statistics=(mean={mean.tolist()}, "
            f"std={std.tolist()})"
        )
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    layer = keras.layers.Normalization(axis=axis, mean=mean, variance=std**2, name=name)
    return layer


def compute_mean_std(data, max_examples=None):
    """Per-channel mean and standard deviation of images, in pixel units.

    Statistics are accumulated in float64 over every pixel of every image
    (population standard deviation), i.e. the definition of the constants
    in this module. Use the training split only: the validation images
    must play no part in training. Host-side views are augmented (zero
    padding lowers the mean a little): for exact statistics pass a
    pipeline built with `num_views=None`.

    Args:
        data: a `tf.data.Dataset` of images or of `(images, labels)` pairs,
            batched or not (with host-side views, the first view is used);
            a `DataSplits` result (its `train` dataset); or a NumPy array
            of images `(..., height, width, channels)`.
        max_examples: optional int, stop after this many images (a quick
            estimate on a large dataset).

    Returns:
        `(mean, std)`: two float64 NumPy arrays of shape `(channels,)`.

    Raises:
        ValueError: if `data` holds no image, or is of another type.

    Example:

    ```python
    data = keras_pcl.data.image_folder("my_images", image_size=(64, 64))
    layer = keras_pcl.data.normalization_layer(
        keras_pcl.data.compute_mean_std(data)
    )
    ```
    """
    import tensorflow as tf

    if hasattr(data, "train") and hasattr(data, "class_names"):
        data = data.train
    if isinstance(data, np.ndarray):
        batches = [data.reshape((-1,) + data.shape[-3:])]
    elif isinstance(data, tf.data.Dataset):
        batches = _image_batches(data)
    else:
        raise ValueError(
            "`data` must be a tf.data.Dataset, a DataSplits result or a NumPy "
            f"array of images. Received: data of type {type(data).__name__}"
        )
    total = 0  # images
    pixel_count = 0
    sums = np.zeros(0)
    sum_squares = np.zeros(0)
    for images in batches:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if max_examples is not None:
            images = images[: max(0, max_examples - total)]
            if not len(images):
                break
        pixels = images.reshape(-1, images.shape[-1]).astype("float64")
        if not pixel_count:
            sums = np.zeros(pixels.shape[-1])
            sum_squares = np.zeros(pixels.shape[-1])
        sums += pixels.sum(0)
        sum_squares += (pixels**2).sum(0)
        pixel_count += pixels.shape[0]
        total += len(images)
    if not pixel_count:
        raise ValueError(
            f"`data` holds no image to compute statistics from. Received: data={data!r}"
        )
    mean = sums / pixel_count
    variance = np.maximum(sum_squares / pixel_count - mean**2, 0.0)
    return mean, np.sqrt(variance)


def _image_batches(dataset):
    """NumPy image batches of a dataset of images or (images, labels)."""
    for element in dataset.as_numpy_iterator():
        if isinstance(element, tuple):
            element = element[0]  # (images, labels)
        if isinstance(element, tuple):
            element = element[0]  # host-side views: the first one
        yield element
