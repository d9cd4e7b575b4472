"""CIFAR-10, CIFAR-100 and ImageNet (ILSVRC-2012) from TensorFlow Datasets.

The loaders never download anything unless asked (`download=True`): a
dataset that is not prepared under `data_dir` raises `FileNotFoundError`
at once, saying where it looked and how to prepare it, instead of hanging
on a network call on a machine without internet.

CIFAR has no validation split in tfds, and its test split must play no part
in model selection, so the validation images are held out from `train`
with `balanced_split` (class-balanced, seeded). CIFAR images are decoded
once, into host memory (150 MB), at the call. ImageNet is read from its
records every epoch (it does not fit in memory); its validation set is, by
default, tfds' `validation` split.
"""

import numpy as np
import tensorflow as tf

from keras_pcl.data import augment
from keras_pcl.data import pipeline
from keras_pcl.data.splits import balanced_split
from keras_pcl.data.splits import check_validation_split
from keras_pcl.validation import check_bool

_READ_BATCH = 8192


def cifar10(
    *,
    data_dir=None,
    download=False,
    validation_split=0.1,
    seed=0,
    batch_size=128,
    num_views=None,
    augmentation="default",
    shuffle=True,
    drop_remainder=False,
    deterministic=None,
):
    """CIFAR-10 training and validation pipelines (tfds `cifar10`).

    The validation split is held out from tfds' `train` split: the same
    fraction of every class (500 images per class for 0.1), chosen with
    `seed` (see `balanced_split`). The test split is not touched.

    Args:
        data_dir: the tfds data folder (default: tfds' own,
            `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
        download: if True, download and prepare the dataset when it is
            not there yet (needs internet). Default False: never touch the
            network.
        validation_split: float in `[0, 1)`, fraction of each class held
            out (0 or None: `validation` is None).
        seed: int >= 0 (default 0): the split, shuffle and host-side
            augmentation. None: split with seed 0, unseeded shuffle and
            augmentation.
        batch_size: int, or None for unbatched datasets.
        num_views: None (default): training yields one uint8 image per
            example and the model augments. An int (the model's
            `num_peers`): a tuple of that many host-augmented views.
        augmentation: host-side policy when `num_views` is set (see
            `keras_pcl.data.augment`); `"default"` is the paper's pad 4 +
            crop + flip.
        shuffle: shuffle the training examples every epoch.
        drop_remainder: drop the last partial training batch (static
            shapes, TPUs). Validation keeps every example.
        deterministic: None, True or False: `tf.data.Options.deterministic`.

    Returns:
        A `DataSplits`: `(train, validation, class_names, num_train,
        num_validation)`. Images are uint8 `(32, 32, 3)`, labels int32.

    Raises:
        FileNotFoundError: if the dataset is not prepared in `data_dir` and
            `download` is False.
        ValueError: for an invalid argument.
        ImportError: for a keras-cv policy without keras-cv installed.

    Example:

    ```python
    data = keras_pcl.data.cifar10(num_views=3)
    model.fit(data.train, validation_data=data.validation, epochs=300)
    ```
    """
    return _cifar(
        "cifar10",
        data_dir=data_dir,
        download=download,
        validation_split=validation_split,
        seed=seed,
        batch_size=batch_size,
        num_views=num_views,
        augmentation=augmentation,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
    )


def cifar100(
    *,
    data_dir=None,
    download=False,
    validation_split=0.1,
    seed=0,
    batch_size=128,
    num_views=None,
    augmentation="default",
    shuffle=True,
    drop_remainder=False,
    deterministic=None,
):
    """CIFAR-100 training and validation pipelines (tfds `cifar100`).

    The 100 fine labels; otherwise exactly as `cifar10` (50 validation
    images per class for `validation_split=0.1`).

    Args:
        data_dir, download, validation_split, seed, batch_size, num_views,
        augmentation, shuffle, drop_remainder, deterministic: as in
            `cifar10`.

    Returns:
        A `DataSplits`; images uint8 `(32, 32, 3)`, labels int32 in
        `[0, 100)`.

    Raises:
        FileNotFoundError: if the dataset is not prepared in `data_dir` and
            `download` is False.
        ValueError: for an invalid argument.
        ImportError: for a keras-cv policy without keras-cv installed.

    Example:

    ```python
    data = keras_pcl.data.cifar100(data_dir="/data/tfds", num_views=3)
    ```
    """
    return _cifar(
        "cifar100",
        data_dir=data_dir,
        download=download,
        validation_split=validation_split,
        seed=seed,
        batch_size=batch_size,
        num_views=num_views,
        augmentation=augmentation,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
    )


def imagenet2012(
    *,
    data_dir=None,
    manual_dir=None,
    download=False,
    validation_split=None,
    seed=0,
    batch_size=256,
    image_size=augment.IMAGENET_IMAGE_SIZE,
    num_views=None,
    augmentation="default",
    shuffle=True,
    shuffle_buffer=10_000,
    drop_remainder=False,
    deterministic=None,
):
    """ImageNet (ILSVRC-2012) training and validation pipelines.

    tfds cannot download ImageNet: download `ILSVRC2012_img_train.tar` and
    `ILSVRC2012_img_val.tar` from image-net.org into `manual_dir` and call
    once with `download=True` to prepare the records under `data_dir`.

    Training images are decoded every epoch and cropped with the paper's
    random resized crop to `image_size` + flip, once per view (host-side
    views are the natural choice here: with `num_views=None` every peer
    gets the same crop, and the model should then be built with
    `augmentation=None` or a flip only). Validation images are resized to
    `image_size * 256 / 224` on the shorter side and centre-cropped.

    Args:
        data_dir: the tfds data folder (default: tfds' own).
        manual_dir: the folder with the two ILSVRC-2012 tar files, used
            with `download=True` (default: `<data_dir>/downloads/manual`).
        download: if True, prepare the dataset from `manual_dir` when it is
            not prepared yet. Default False.
        validation_split: None (default): validation is tfds' `validation`
            split, the 50,000 ILSVRC-2012 validation images (which the
            literature, the paper included, reports as its test figure).
            A float in `(0, 1)`: that fraction of each class is held out
            from `train` instead (`balanced_split` with `seed`); this needs
            one pass over the training records to read the labels (images
            are not decoded, but every record is read: minutes).
        seed: int >= 0 (default 0), or None, as in `cifar10`.
        batch_size: int, or None for unbatched datasets.
        image_size: int, the side of training crops and validation crops.
        num_views: None or an int, as in `cifar10`.
        augmentation: host-side policy (see `keras_pcl.data.augment`);
            `"default"` is random resized crop + flip; None resizes and
            centre-crops training images like validation ones.
        shuffle: shuffle the record files and the examples every epoch.
        shuffle_buffer: int, examples in the shuffle buffer.
        drop_remainder: drop the last partial training batch.
        deterministic: None, True or False: `tf.data.Options.deterministic`.

    Returns:
        A `DataSplits`; images uint8 `(image_size, image_size, 3)`, labels
        int32 in `[0, 1000)`.

    Raises:
        FileNotFoundError: if the dataset is not prepared in `data_dir` and
            `download` is False.
        ValueError: for an invalid argument.
        ImportError: for a keras-cv policy without keras-cv installed.

    Example:

    ```python
    data = keras_pcl.data.imagenet2012(data_dir="/data/tfds", num_views=3)
    ```
    """
    import tensorflow_datasets as tfds

    pipeline.check_common_args(batch_size, num_views, seed, deterministic)
    if validation_split is not None:
        validation_split = check_validation_split(validation_split)
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or (image_size < 1)
    ):
        raise ValueError(
            f"`image_size` must be an int >= 1. Received: image_size={image_size!r}"
        )
    augment.check_augmentation(augmentation)
    builder = _builder("imagenet2012", data_dir, download, manual_dir)
    decoders = {"image": tfds.decode.SkipDecoding()}
    resize = int(round(image_size * augment.IMAGENET_RESIZE / 224))

    def decode(example):
        image = tf.io.decode_image(
            example["image"], channels=3, expand_animations=False
        )
        return image, tf.cast(example["label"], tf.int32)

    if validation_split is None:
        train = _as_dataset(
            builder,
            split="train",
            decoders=decoders,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        validation = _as_dataset(
            builder, split="validation", decoders=decoders, shuffle_files=False
        )
        num_train = _num_examples(builder, "train", train)
        num_validation = _num_examples(builder, "validation", validation)
    else:
        # Class-balanced hold-out: the labels first (a pass without image
        # decoding), then a filter on the position of each record, which
        # needs the records in their stored order.
        records = _as_dataset(
            builder, split="train", decoders=decoders, shuffle_files=False
        )
        labels = _labels(records)
        train_idx, val_idx = balanced_split(
            labels, validation_split, 0 if seed is None else seed
        )
        held_out = np.zeros(len(labels), dtype=bool)
        held_out[val_idx] = True
        held_out = tf.constant(held_out)
        indexed = records.enumerate()
        train = indexed.filter(lambda i, _: ~tf.gather(held_out, i)).map(
            lambda _, example: example
        )
        validation = indexed.filter(lambda i, _: tf.gather(held_out, i)).map(
            lambda _, example: example
        )
        if not len(val_idx):
            validation = None
        num_train, num_validation = len(train_idx), len(val_idx)
        train = train.apply(tf.data.experimental.assert_cardinality(num_train))
        if validation is not None:
            validation = validation.apply(
                tf.data.experimental.assert_cardinality(num_validation)
            )
    autotune = tf.data.AUTOTUNE
    train = train.map(decode, num_parallel_calls=autotune)
    if validation is not None:
        validation = validation.map(decode, num_parallel_calls=autotune)

    def eval_fn(image):
        return augment.resize_center_crop(image, resize=resize, size=image_size)

    if augmentation is None:
        # Images come in all sizes: they must still be cropped to batch.
        view_fn = lambda image, seed_: eval_fn(image)  # noqa: E731
    else:
        view_fn = augment.view_function(
            augmentation,
            base=lambda image, seed_: augment.random_resized_crop_flip(
                image, seed_, size=image_size
            ),
        )
    train, validation = pipeline.finish(
        train,
        validation,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        num_views=num_views,
        view_fn=view_fn,
        train_fn=view_fn,
        eval_fn=eval_fn,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
    )
    return pipeline.DataSplits(
        train,
        validation,
        tuple(builder.info.features["label"].names),
        num_train,
        num_validation,
    )


def _cifar(name, *, data_dir, download, validation_split, seed, **kwargs):
    pipeline.check_common_args(
        kwargs["batch_size"], kwargs["num_views"], seed, kwargs["deterministic"]
    )
    validation_split = check_validation_split(validation_split)
    augment.check_augmentation(kwargs["augmentation"])
    builder = _builder(name, data_dir, download, manual_dir=None)
    records = _as_dataset(
        builder, split="train", as_supervised=True, shuffle_files=False
    )
    # Decode once, into memory: every epoch then reads the arrays.
    images, labels = [], []
    for image, label in records.batch(_READ_BATCH).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    images = np.concatenate(images)
    labels = np.concatenate(labels).astype("int32")
    train_idx, val_idx = balanced_split(
        labels, validation_split, 0 if seed is None else seed
    )
    train = tf.data.Dataset.from_tensor_slices((images[train_idx], labels[train_idx]))
    validation = None
    if validation_split:
        validation = tf.data.Dataset.from_tensor_slices(
            (images[val_idx], labels[val_idx])
        )
    augmentation = kwargs.pop("augmentation")
    train, validation = pipeline.finish(
        train,
        validation,
        shuffle_buffer=max(1, len(train_idx)),
        seed=seed,
        view_fn=augment.view_function(augmentation, base=augment.pad_crop_flip),
        train_fn=None,
        eval_fn=None,
        **kwargs,
    )
    return pipeline.DataSplits(
        train,
        validation,
        tuple(builder.info.features["label"].names),
        len(train_idx),
        len(val_idx),
    )


def _builder(name, data_dir, download, manual_dir):
    """The tfds builder, prepared only when `download` asks for it."""
    import tensorflow_datasets as tfds

    check_bool("download", download)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        # A no-op when the dataset is already prepared.
        builder.download_and_prepare(download_config=config)
    return builder


def _as_dataset(builder, **kwargs):
    """`builder.as_dataset`, with a clear error when nothing is prepared.

    tfds raises an AssertionError ("could not find data") when the
    dataset is not prepared; the check is tfds' own, made before any read,
    so a missing dataset is reported at once and never downloaded.
    """
    try:
        return builder.as_dataset(**kwargs)
    except AssertionError as error:
        if "could not find data" not in str(error):
            raise
        if builder.name == "imagenet2012":
            how = (
                "ImageNet cannot be downloaded by tfds: download "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                "https://image-net.org into a folder, then call once with "
                "manual_dir=<that folder> and download=True to prepare it"
            )
        else:
            how = (
                "pass download=True to download and prepare it (needs "
                "internet), or pass the data_dir of a machine or folder "
                f"where `tfds.builder({builder.name!r}).download_and_prepare()` "
                "has already run"
            )
        raise FileNotFoundError(
            f"The tfds dataset {builder.name!r} is not prepared in "
            f"{builder.data_dir!r}. To fix it, {how}. "
            f"Received: data_dir={str(builder.data_dir_root)!r}, download=False"
        ) from None


def _labels(records):
    """Every label of a dataset of tfds examples, in order, as int32."""
    labels = records.map(
        lambda example: example["label"], num_parallel_calls=tf.data.AUTOTUNE
    ).batch(65536)
    return np.concatenate(list(labels.as_numpy_iterator())).astype("int32")


def _num_examples(builder, split, dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(builder.info.splits[split].num_examples)
