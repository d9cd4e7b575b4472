"""Handwritten digits that ship with scikit-learn: a dataset that needs no network.

`digits()` serves the 1,797 real 8x8 handwritten digits of
`sklearn.datasets.load_digits` (UCI optical digits, 10 classes, pixel values
0-16) as uint8 grayscale images upsampled to `image_size`, in the same
`DataSplits` form as the other loaders. It is the quickstart's default data:
it is on disk wherever keras-pcl is installed, so the first command works
offline and trains in a few minutes on a laptop CPU.

Digits must not be mirrored, so the augmentation here is a random shift
(pad + crop) without flips; pass `augmentation=digits_augmentation(...)` to
`PeerCollaborativeModel` for in-model augmentation.
"""

import numpy as np
import tensorflow as tf

from keras_pcl.data import pipeline
from keras_pcl.data.splits import balanced_split
from keras_pcl.data.splits import check_validation_split

CLASS_NAMES = tuple(str(d) for d in range(10))


def digits(
    *,
    image_size=32,
    validation_split=0.2,
    seed=0,
    batch_size=64,
    num_views=None,
    shuffle=True,
    drop_remainder=False,
    deterministic=None,
):
    """scikit-learn's digits as training and validation pipelines.

    Args:
        image_size: int >= 8, the side of the (square) upsampled images.
        validation_split: float in `[0, 1)`, fraction of each class held
            out for validation (class-balanced, seeded; see
            `balanced_split`).
        seed: int >= 0: the split, the shuffle and host-side augmentation.
        batch_size: int, or None for unbatched datasets.
        num_views: None (the model augments) or an int (the model's
            `num_peers`): that many host-side random shifts per example.
        shuffle: shuffle the training examples every epoch.
        drop_remainder: drop the last partial training batch.
        deterministic: `tf.data.Options.deterministic` (None: default).

    Returns:
        A `DataSplits`: uint8 images `(image_size, image_size, 1)`, int32
        labels 0-9, class names `"0"` ... `"9"`.

    Raises:
        ImportError: scikit-learn is not installed (the message gives the
            pip line).
        ValueError: a bad `image_size` or a shared argument out of range.

    Example:

    ```python
    splits = keras_pcl.data.digits(image_size=32, batch_size=64)
    splits.num_train, splits.num_validation      # (1437, 360)
    ```
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "`keras_pcl.data.digits` needs scikit-learn, which ships the "
            "digits: `pip install scikit-learn`."
        ) from error
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < 8
    ):
        raise ValueError(
            "`image_size` must be an int >= 8 (the digits are 8x8). "
            f"Received: image_size={image_size!r}"
        )
    pipeline.check_common_args(batch_size, num_views, seed, deterministic)
    validation_split = check_validation_split(validation_split)

    bunch = load_digits()
    labels = bunch.target.astype("int32")
    pixels = bunch.images.astype("float32") * (255.0 / 16.0)  # 0-16 -> 0-255
    images = tf.image.resize(pixels[..., None], (image_size, image_size), "bilinear")
    images = np.clip(np.round(images.numpy()), 0, 255).astype("uint8")

    train_idx, val_idx = balanced_split(
        labels, validation_split, 0 if seed is None else seed
    )
    train = tf.data.Dataset.from_tensor_slices((images[train_idx], labels[train_idx]))
    validation = None
    if validation_split:
        validation = tf.data.Dataset.from_tensor_slices(
            (images[val_idx], labels[val_idx])
        )
    padding = max(1, image_size // 8)
    train, validation = pipeline.finish(
        train,
        validation,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=max(1, len(train_idx)),
        seed=seed,
        num_views=num_views,
        view_fn=lambda image, view_seed: random_shift(image, view_seed, padding),
        train_fn=None,
        eval_fn=None,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
    )
    return pipeline.DataSplits(
        train, validation, CLASS_NAMES, len(train_idx), len(val_idx)
    )


def random_shift(image, seed, padding):
    """Zero-pads `image` by `padding` and crops it back at a random offset.

    Args:
        image: one image `(height, width, channels)`.
        seed: a shape-(2,) int tensor (stateless draw).
        padding: pixels of padding on each side.
    """
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


def digits_augmentation(image_size=32, seed=None):
    """In-model augmentation for digits: a random shift, no flips.

    Returns a `keras_pcl.augmentation.RandomPadCrop` with `image_size // 8`
    pixels of padding, for `PeerCollaborativeModel(augmentation=...)`.
    """
    from keras_pcl.augmentation import RandomPadCrop

    return RandomPadCrop(
        padding=max(1, image_size // 8), seed=seed, name="random_shift"
    )
