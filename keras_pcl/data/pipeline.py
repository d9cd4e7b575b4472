"""The common tail of every input pipeline, and the loaders' result type.

Decoded examples (uint8 images, int32 labels) come in; the training dataset
is shuffled, optionally augmented on the host into `num_views` views,
batched and prefetched; the validation dataset is batched and prefetched in
a fixed order.
"""

import collections

import tensorflow as tf

from keras_pcl.data.augment import multi_view

DataSplits = collections.namedtuple(
    "DataSplits",
    [
        "train",
        "validation",
        "class_names",
        "num_train",
        "num_validation",
        "skipped_files",
    ],
    defaults=((),),
)
DataSplits.__doc__ = """What every `keras_pcl.data` loader returns.

Fields:
    train: `tf.data.Dataset` of `(images, labels)` batches for `fit`.
        `images` is a uint8 batch, or a tuple of `num_views` uint8 batches
        when the loader augments on the host; `labels` is int32.
    validation: `tf.data.Dataset` of `(images, labels)` batches in a fixed
        order (no augmentation, one view), or None without a validation
        split.
    class_names: tuple of str; label `i` is `class_names[i]`.
    num_train, num_validation: examples in each split.
    skipped_files: `image_folder` only: paths of the files that could not
        be decoded and were left out.
"""


def finish(
    train,
    validation,
    *,
    batch_size,
    shuffle,
    shuffle_buffer,
    seed,
    num_views,
    view_fn,
    train_fn,
    eval_fn,
    drop_remainder,
    deterministic,
):
    """Shuffles, augments, batches and prefetches decoded examples.

    Args:
        train, validation: unbatched datasets of `(uint8 image, label)`
            (validation may be None), already decoded and cached.
        batch_size: int >= 1, or None to leave the datasets unbatched.
        shuffle: whether to shuffle the training examples (every epoch).
        shuffle_buffer: int, the shuffle buffer size.
        seed: optional int, seeds the shuffle and the augmentation draws.
        num_views: None (one image per example, augmented in the model) or
            an int: that many host-augmented views per training example.
        view_fn: `fn(image, seed) -> image`, one training view.
        train_fn: `fn(image, seed) -> image` applied to training images when
            `num_views` is None (e.g. the ImageNet crop that makes them
            batchable), or None.
        eval_fn: `fn(image) -> image` for validation images, or None.
        drop_remainder: drop the last partial training batch (static shapes).
        deterministic: None (tf.data's default), True or False, set as
            `tf.data.Options.deterministic` on both datasets.

    Returns:
        `(train, validation)` datasets.
    """
    autotune = tf.data.AUTOTUNE
    if shuffle:
        train = train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if num_views is not None:
        train = multi_view(train, num_views, view_fn, seed=seed)
    elif train_fn is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip((train, seeds)).map(
            lambda example, s: (
                train_fn(example[0], tf.stack([s, tf.constant(0, tf.int64)])),
                example[1],
            ),
            num_parallel_calls=autotune,
        )
    if validation is not None and eval_fn is not None:
        validation = validation.map(
            lambda image, label: (eval_fn(image), label),
            num_parallel_calls=autotune,
        )
    options = tf.data.Options()
    if deterministic is not None:
        options.deterministic = bool(deterministic)
    datasets = []
    for dataset, drop in ((train, drop_remainder), (validation, False)):
        if dataset is None:
            datasets.append(None)
            continue
        if batch_size is not None:
            dataset = dataset.batch(
                batch_size, drop_remainder=drop, num_parallel_calls=autotune
            )
        datasets.append(dataset.prefetch(autotune).with_options(options))
    return tuple(datasets)


def check_common_args(batch_size, num_views, seed, deterministic):
    """Validates the arguments every loader shares."""
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be an int >= 1, or None for unbatched "
            f"datasets. Received: batch_size={batch_size!r}"
        )
    if num_views is not None and (
        isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1
    ):
        raise ValueError(
            "`num_views` must be None (augment in the model) or an int >= 1, "
            "the model's `num_peers` (augment on the host). "
            f"Received: num_views={num_views!r}"
        )
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or seed < 0
    ):
        raise ValueError(f"`seed` must be an int >= 0. Received: seed={seed!r}")
    if deterministic not in (None, True, False):
        raise ValueError(
            "`deterministic` must be None, True or False. "
            f"Received: deterministic={deterministic!r}"
        )
