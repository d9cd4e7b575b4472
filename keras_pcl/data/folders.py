"""`image_folder`: a folder of class sub-folders as PCL input pipelines.

The layout is the one `keras.utils.image_dataset_from_directory` and
`tfds.folder_dataset.ImageFolder` read: `directory/<class name>/<image>`.
Listing and decoding are written here rather than delegated to
`image_dataset_from_directory`, because it

* splits off validation images without balancing the classes,
* stops in the middle of an epoch at the first undecodable file, without
  naming it,
* accepts empty class folders silently, and
* always resizes (to 256x256 by default), so a stray image of another size
  goes unnoticed.

Every image is decoded once, when the loader is called, into host memory
(N x height x width x 3 bytes: 150 MB for CIFAR-10's 50,000 images); the
epochs then read that cache. A folder too large for memory belongs in tfds
(`tfds.folder_dataset.ImageFolder` or a dataset builder).
"""

import collections
import os
import warnings

import numpy as np
import tensorflow as tf

from keras_pcl.data import augment
from keras_pcl.data import pipeline
from keras_pcl.data.splits import balanced_split
from keras_pcl.data.splits import check_validation_split
from keras_pcl.validation import check_choice

# The formats `tf.io.decode_image` reads (as in image_dataset_from_directory).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3")

FolderListing = collections.namedtuple(
    "FolderListing",
    [
        "train_paths",
        "train_labels",
        "validation_paths",
        "validation_labels",
        "class_names",
    ],
)
FolderListing.__doc__ = """The files of each split of an image folder.

Fields:
    train_paths, validation_paths: NumPy arrays of file paths (str).
    train_labels, validation_labels: NumPy int32 arrays of labels.
    class_names: tuple of the class sub-folder names, sorted; label `i` is
        `class_names[i]`.
"""


def list_image_folder(directory, validation_split=0.1, seed=0):
    """Lists a folder of class sub-folders and splits it, without decoding.

    Class names are the sub-folder names in sorted order (label `i` is the
    `i`-th name); files are the ones with an image extension
    (`IMAGE_EXTENSIONS`, any case), sorted by name; hidden folders and
    files are ignored. The validation split is
    `balanced_split` of those labels: the same fraction of every class,
    drawn with `seed`. `image_folder` uses exactly this split.

    Args:
        directory: path of a folder holding one sub-folder per class.
        validation_split: float in `[0, 1)`, the fraction of each class held
            out for validation; 0 or None for none.
        seed: int >= 0, the seed of the split.

    Returns:
        A `FolderListing` of paths and labels of each split, and the class
        names.

    Raises:
        FileNotFoundError: if `directory` does not exist.
        ValueError: if it has fewer than 2 class sub-folders, if a class
            folder holds no image file, or for an invalid
            `validation_split` or `seed`.

    Example:

    ```python
    listing = list_image_folder("../shared/data/cifar10/train", 0.1)
    len(listing.validation_paths)  # 5000: 500 of each class
    ```
    """
    validation_split = check_validation_split(validation_split)
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            "`directory` does not exist or is not a folder. Pass the path "
            "of a folder holding one sub-folder of images per class. "
            f"Received: directory={directory!r}"
        )
    class_names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if len(class_names) < 2:
        loose = [name for name in os.listdir(directory) if _is_image(name)]
        hint = (
            f" It holds {len(loose)} image file(s) directly: move them into "
            "one sub-folder per class."
            if loose
            else ""
        )
        raise ValueError(
            "`directory` must hold one sub-folder of images per class, at "
            f"least 2; found {len(class_names)} ({class_names}).{hint} "
            f"Received: directory={directory!r}"
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        files = sorted(
            entry.name
            for entry in os.scandir(folder)
            if entry.is_file()
            and _is_image(entry.name)
            and not entry.name.startswith(".")  # e.g. macOS "._x.jpg"
        )
        if not files:
            raise ValueError(
                f"Class folder {name!r} holds no image file (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}). Add images or remove the "
                f"folder. Received: directory={directory!r}"
            )
        paths.extend(os.path.join(folder, f) for f in files)
        labels.extend([label] * len(files))
    paths = np.array(paths)
    labels = np.array(labels, dtype="int32")
    train, validation = balanced_split(labels, validation_split, seed)
    return FolderListing(
        paths[train],
        labels[train],
        paths[validation],
        labels[validation],
        tuple(class_names),
    )


def image_folder(
    directory,
    *,
    validation_split=0.1,
    seed=0,
    batch_size=128,
    image_size=None,
    interpolation="bilinear",
    crop_to_aspect_ratio=False,
    on_corrupt="skip",
    num_views=None,
    augmentation="default",
    shuffle=True,
    drop_remainder=False,
    deterministic=None,
):
    """Training and validation pipelines for a folder of class sub-folders.

    The files and the split are those of `list_image_folder`. Every image is
    decoded once (3 channels: grayscale is repeated, alpha dropped; the
    first frame of a GIF), at this call, into host memory; the pipelines
    read that cache. Training batches are shuffled every epoch.

    Undecodable files (`on_corrupt`): by default they are skipped, a
    warning gives their count and first paths, and the result lists them in
    `skipped_files`; the split of the other files does not change (it is
    computed on the listing). `on_corrupt="error"` raises instead.

    Image sizes (`image_size`): None requires every image to have the size
    of the first one, and raises otherwise; `(height, width)` resizes every
    image of another size with `interpolation`, after a centre crop to the
    target aspect ratio if `crop_to_aspect_ratio`.

    Args:
        directory: path of a folder holding one sub-folder per class.
        validation_split: float in `[0, 1)`, the fraction of each class held
            out for validation (0 or None: `validation` is None).
        seed: int >= 0 (default 0): the split, the shuffle and the
            host-side augmentation. None: split with seed 0, unseeded
            shuffle and augmentation.
        batch_size: int, or None for unbatched datasets.
        image_size: None, or `(height, width)` to resize images to.
        interpolation: resize method, one of `INTERPOLATIONS`.
        crop_to_aspect_ratio: centre-crop to the aspect ratio of
            `image_size` before resizing, instead of distorting.
        on_corrupt: `"skip"` (default) or `"error"`, for files that cannot
            be decoded.
        num_views: None (default): training yields one uint8 image per
            example and the model augments (its `augmentation`). An int
            (the model's `num_peers`): training yields a tuple of that many
            independently augmented uint8 views, and the model applies no
            augmentation of its own.
        augmentation: the host-side policy when `num_views` is set (see
            `keras_pcl.data.augment`): `"default"` (pad `size // 8` + crop +
            flip), `"randaugment"`, `"augmix"`, `"keras_cv.randaugment"`,
            `"keras_cv.augmix"`, a layer or a callable.
        shuffle: shuffle the training examples every epoch.
        drop_remainder: drop the last partial training batch, for static
            shapes (TPUs). Validation keeps every example.
        deterministic: None, True or False: `tf.data.Options.deterministic`
            (True with a `seed` makes the epochs reproducible).

    Returns:
        A `DataSplits` (`train`, `validation`, `class_names`, `num_train`,
        `num_validation`, `skipped_files`).

    Raises:
        FileNotFoundError: if `directory` does not exist.
        ValueError: for a directory without class sub-folders, an empty
            class folder, an undecodable file with `on_corrupt="error"`, a
            class left without any decodable training image, images of
            different sizes with `image_size=None`, or an invalid argument.
        ImportError: for a keras-cv policy without keras-cv installed.

    Example:

    ```python
    data = keras_pcl.data.image_folder(
        "../shared/data/cifar10/train", num_views=3, seed=0
    )
    model.fit(data.train, validation_data=data.validation, epochs=300)
    ```
    """
    pipeline.check_common_args(batch_size, num_views, seed, deterministic)
    check_choice("on_corrupt", on_corrupt, ("skip", "error"))
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    if image_size is not None:
        image_size = _check_image_size(image_size)
    augment.check_augmentation(augmentation)  # Before the long decode.
    listing = list_image_folder(
        directory, validation_split, 0 if seed is None else seed
    )
    paths = np.concatenate([listing.train_paths, listing.validation_paths])
    images, decoded = _decode_all(
        paths, image_size, interpolation, crop_to_aspect_ratio
    )
    skipped = tuple(paths[~decoded])
    if skipped:
        examples = ", ".join(skipped[:3])
        if on_corrupt == "error":
            raise ValueError(
                f"{len(skipped)} file(s) could not be decoded as images, "
                f"e.g. {examples}. Remove or replace them, or pass "
                "on_corrupt='skip' to leave them out. "
                f"Received: on_corrupt={on_corrupt!r}"
            )
        warnings.warn(
            f"image_folder: skipped {len(skipped)} file(s) that could not be "
            f"decoded as images, e.g. {examples} (see `skipped_files`).",
            stacklevel=2,
        )
    num_train_listed = len(listing.train_paths)
    labels = np.concatenate([listing.train_labels, listing.validation_labels])
    positions = np.cumsum(decoded) - 1  # row of each decoded file in `images`
    keep_train = np.flatnonzero(decoded[:num_train_listed])
    keep_val = num_train_listed + np.flatnonzero(decoded[num_train_listed:])
    missing = sorted(
        set(range(len(listing.class_names))) - set(labels[keep_train].tolist())
    )
    if missing:
        raise ValueError(
            f"Class {listing.class_names[missing[0]]!r} has no decodable "
            "training image left. Fix or replace its files. "
            f"Received: directory={os.fspath(directory)!r}"
        )

    height, width = images.shape[1:3]
    policy_base = _scaled_pad_crop_flip(min(height, width))
    view_fn = augment.view_function(augmentation, base=policy_base)
    train = tf.data.Dataset.from_tensor_slices(
        (images[positions[keep_train]], labels[keep_train])
    )
    validation = None
    if validation_split:
        validation = tf.data.Dataset.from_tensor_slices(
            (images[positions[keep_val]], labels[keep_val])
        )
    train, validation = pipeline.finish(
        train,
        validation,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=max(1, len(keep_train)),
        seed=seed,
        num_views=num_views,
        view_fn=view_fn,
        train_fn=None,
        eval_fn=None,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
    )
    return pipeline.DataSplits(
        train,
        validation,
        listing.class_names,
        len(keep_train),
        len(keep_val),
        skipped,
    )


def _scaled_pad_crop_flip(size):
    padding = max(1, size // 8)
    return lambda image, seed: augment.pad_crop_flip(image, seed, padding)


def _decode_all(paths, image_size, interpolation, crop_to_aspect_ratio):
    """Decodes every file once: `(images, decoded)`.

    `images` holds the decodable files in order (uint8, one shape);
    `decoded[i]` says whether `paths[i]` was decodable.
    """
    if image_size is None:
        target = _first_image_size(paths)
    else:
        target = image_size

    def load(index, path):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
        shape = tf.shape(image)[:2]
        same = tf.reduce_all(tf.equal(shape, target))
        if image_size is None:
            # Mixed sizes are reported after the pass, with file names.
            image = tf.cond(
                same, lambda: image, lambda: tf.zeros(target + (3,), tf.uint8)
            )
        else:
            image = tf.cond(
                same,
                lambda: image,
                lambda: _resize(image, target, interpolation, crop_to_aspect_ratio),
            )
        return index, tf.ensure_shape(image, target + (3,)), shape

    dataset = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # Drops the elements whose decoding raised (corrupt files); they
        # are found afterwards as the indices that did not come through.
        .ignore_errors()
        .batch(1024)
    )
    indices, images, shapes = [], [], []
    for index, image, shape in dataset.as_numpy_iterator():
        indices.append(index)
        images.append(image)
        shapes.append(shape)
    decoded = np.zeros(len(paths), dtype=bool)
    if not indices:
        directory = os.path.dirname(os.path.dirname(paths[0]))
        raise ValueError(
            f"None of the {len(paths)} image files could be decoded, e.g. "
            f"{paths[0]}. Received: directory={directory!r}"
        )
    indices = np.concatenate(indices)
    shapes = np.concatenate(shapes)
    decoded[indices] = True
    if image_size is None:
        other = np.flatnonzero(np.any(shapes != np.array(target), axis=1))
        if len(other):
            first = other[0]
            raise ValueError(
                f"Images have different sizes: {len(other)} of "
                f"{len(indices)} are not {target[0]}x{target[1]} like the "
                f"first one, e.g. {paths[indices[first]]} is "
                f"{shapes[first][0]}x{shapes[first][1]}. Pass "
                "image_size=(height, width) to resize them (see "
                "`interpolation` and `crop_to_aspect_ratio`). "
                "Received: image_size=None"
            )
    return np.concatenate(images), decoded


def _first_image_size(paths):
    for path in paths:
        try:
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=3, expand_animations=False
            )
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            continue
        return tuple(int(d) for d in image.shape[:2])
    return (1, 1)  # Nothing decodes: reported by the caller.


def _resize(image, size, interpolation, crop_to_aspect_ratio):
    if crop_to_aspect_ratio:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        target_ratio = size[1] / size[0]
        crop_h = tf.minimum(shape[0], shape[1] / target_ratio)
        crop_w = tf.minimum(shape[1], shape[0] * target_ratio)
        crop_h = tf.cast(tf.round(crop_h), tf.int32)
        crop_w = tf.cast(tf.round(crop_w), tf.int32)
        top = (tf.shape(image)[0] - crop_h) // 2
        left = (tf.shape(image)[1] - crop_w) // 2
        image = image[top : top + crop_h, left : left + crop_w]
    image = tf.image.resize(image, size, method=interpolation)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _check_image_size(image_size):
    if (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1
            for d in image_size
        )
    ):
        return tuple(image_size)
    raise ValueError(
        "`image_size` must be None (all images one size) or a "
        "(height, width) pair of ints >= 1. "
        f"Received: image_size={image_size!r}"
    )


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)
