"""The data of a training run: loading, the resumable stream, preprocessing.

`load_data` reads `config.dataset`; `training_stream` turns the training
split into every batch of every epoch as a function of position only (so a
resumed run skips to the exact batch); `preprocessing_statistics` and
`in_model_augmentation` are the per-dataset settings of the model.
"""

import os


def load_data(config):
    """`config.dataset` through its `keras_pcl.data` loader.

    CIFAR and image folders come unbatched and in a fixed order (decoded
    once, in memory): `training_stream` shuffles and batches them per
    epoch. ImageNet comes as the loader's own batched pipeline.

    With `config.train_images` N > 0, the training split is a class-balanced
    subset of N of its images (`training_subset`), still in dataset order;
    the validation split is the same as without it.

    Raises:
        ValueError: an unknown `dataset`, or `train_images` that the
            dataset cannot serve (ImageNet; more images than the training
            split has of some class).
    """
    check_train_images(config)
    splits = _load(config)
    if config.train_images:
        splits = training_subset(splits, config.train_images, config.seed)
    return splits


def check_train_images(config):
    """Raises a `ValueError` for a `config.train_images` its dataset lacks.

    An int >= 0, and 0 for ImageNet (its training split is a pipeline of
    records, not decoded into memory, so no subset is drawn from it).
    Whether every class has enough images is known once the data is read
    (`training_subset`).
    """
    from keras_pcl import validation

    validation.check_int("train_images", config.train_images, minimum=0)
    validation.check(
        not config.train_images or config.dataset != "imagenet2012",
        "train_images",
        config.train_images,
        "0 for dataset='imagenet2012' (its training split is a pipeline of "
        "records, not in memory: no subset is drawn from it)",
    )


def _load(config):
    from keras_pcl import data

    common = dict(
        validation_split=config.validation_split or None,
        seed=config.seed,
        deterministic=True if config.deterministic else None,
    )
    if config.dataset == "imagenet2012":
        return data.imagenet2012(
            data_dir=config.data_dir,
            download=config.download,
            batch_size=config.batch_size,
            drop_remainder=True,
            num_views=config.num_peers if config.host_augmentation else None,
            **common,
        )
    unbatched = dict(batch_size=None, shuffle=False, **common)
    if config.dataset == "digits":
        size = config.image_size[0] if config.image_size else 32
        return data.digits(image_size=size, **unbatched)
    if config.dataset in ("cifar10", "cifar100"):
        loader = getattr(data, config.dataset)
        return loader(data_dir=config.data_dir, download=config.download, **unbatched)
    if os.path.isdir(config.dataset):
        return data.image_folder(
            config.dataset, image_size=config.image_size, **unbatched
        )
    raise ValueError(
        "`dataset` must be 'digits', 'cifar10', 'cifar100', 'imagenet2012' or "
        "the path of an image folder (one sub-folder per class); no directory "
        f"{config.dataset!r} exists. Received: dataset={config.dataset!r}"
    )


def training_subset(splits, train_images, seed=0):
    """`splits` with a class-balanced subset of `train_images` training images.

    Every class gets `train_images // C` images of the training split (`C`
    classes), and the first `train_images % C` classes one more. Which
    images is a seeded draw made separately for each class (nested: a
    smaller subset of the same seed is part of a larger one), kept in
    dataset order. The validation split is returned as it is.

    Args:
        splits: an unbatched, in-memory `DataSplits` (what `load_data` reads
            for digits, CIFAR and image folders).
        train_images: int >= number of classes.
        seed: int >= 0, the seed of the draw.

    Raises:
        ValueError: fewer `train_images` than classes, or more than the
            training split has of some class.
    """
    import numpy as np
    import tensorflow as tf

    from keras_pcl import validation

    num_classes = len(splits.class_names)
    validation.check_int("train_images", train_images, minimum=num_classes)
    images, labels = splits.train.batch(splits.num_train).get_single_element()
    labels_np = np.asarray(labels)
    share, extra = divmod(train_images, num_classes)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels_np == c)
        count = share + (c < extra)
        if count > len(members):
            validation.raise_invalid(
                "train_images",
                train_images,
                "a number of images that every class of the training split "
                f"can serve: it asks {count} of class "
                f"{splits.class_names[c]!r}, which has {len(members)} (the "
                f"training split: {splits.num_train} images, {num_classes} "
                "classes)",
            )
        # Salted: not the generator `balanced_split` draws the validation
        # split of this class with.
        rng = np.random.default_rng([int(seed), c, 1])
        chosen.append(members[rng.permutation(len(members))[:count]])
    indices = np.sort(np.concatenate(chosen))
    train = tf.data.Dataset.from_tensor_slices(
        (tf.gather(images, indices), tf.gather(labels, indices))
    )
    return splits._replace(train=train, num_train=len(indices))


def training_stream(
    examples, config, steps_per_epoch, num_processes=1, process_index=0
):
    """All training batches of all epochs, as a function of position only.

    Epoch `e` shuffles `examples` with a seed made of `config.seed` and `e`
    (and, with host augmentation, draws each view with a seed made of the
    epoch and the example's position), so `stream.skip(n)` in a new process
    yields exactly the batches an uninterrupted run trains on after step
    `n`. (A `shuffle(reshuffle_each_iteration=True)` pipeline depends on how
    often the dataset was iterated before, which a restart changes.)

    With several processes, process `i` of `P` yields rows
    `[i * B / P, (i + 1) * B / P)` of every global batch of `B =
    config.batch_size` (the same order, the same views): it gathers and
    augments only its own examples, the processes' parts are disjoint and
    together they are the single-process stream.
    """
    import tensorflow as tf

    from keras_pcl import data

    num_examples = int(examples.cardinality())
    # The decoded examples are in memory already; as two tensors they can be
    # gathered in any order without iterating the dataset.
    images, labels = examples.batch(num_examples).get_single_element()
    view_fn = None
    if config.host_augmentation and config.dataset == "digits":  # No flips.
        from keras_pcl.data.digits import random_shift

        padding = max(1, int(examples.element_spec[0].shape[0]) // 8)
        view_fn = lambda image, seed: random_shift(image, seed, padding)  # noqa: E731
    elif config.host_augmentation:
        view_fn = data.view_function("default")
    batch_size = config.batch_size
    local_size = batch_size // num_processes
    begin = process_index * local_size

    def epoch_batches(epoch):
        seed = tf.stack([tf.constant(config.seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seed=seed
        )
        indices = tf.data.Dataset.from_tensor_slices(order)
        if view_fn is None:
            batches = indices.batch(batch_size, drop_remainder=True)
            batches = batches.take(steps_per_epoch)
            if num_processes > 1:
                batches = batches.map(lambda i: i[begin : begin + local_size])
            return batches.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))

        def views(position, i):
            image = tf.gather(images, i)
            return (
                tuple(
                    view_fn(
                        image, tf.stack([epoch, position * config.num_peers + j]) + seed
                    )
                    for j in range(config.num_peers)
                ),
                tf.gather(labels, i),
            )

        positions = indices.take(steps_per_epoch * batch_size).enumerate()
        if num_processes > 1:  # Global positions: the views' seeds.
            positions = positions.filter(
                lambda position, i: tf.math.logical_and(
                    position % batch_size >= begin,
                    position % batch_size < begin + local_size,
                )
            )
        return positions.map(
            views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).batch(local_size, drop_remainder=True)

    return tf.data.Dataset.range(config.epochs).flat_map(epoch_batches)


def validation_batches(examples, batch_size, distribution):
    """The validation set in batches of the global `batch_size`, sharded.

    One device: `examples.batch(batch_size)`, every example. Keras' JAX
    trainer needs every batch divisible by the number of devices; with
    several (JAX `DataParallel`, several processes) the last, smaller batch
    keeps the largest multiple of the device count, so up to
    `distribution.num_replicas - 1` examples are not scored, and each
    process yields its `distribution.shard` of every batch. TensorFlow's
    strategies split an uneven batch themselves: every example.
    """
    import keras
    import tensorflow as tf

    devices = distribution.num_replicas
    if devices == 1 or keras.backend.backend() != "jax":
        return examples.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    num_examples = int(examples.cardinality())
    if num_examples < 0:  # Unknown (a pipeline of records): full batches only.
        batches = examples.batch(batch_size, drop_remainder=True)
    else:
        full = num_examples // batch_size * batch_size
        last = (num_examples - full) // devices * devices
        batches = examples.take(full).batch(batch_size, drop_remainder=True)
        if last:
            batches = batches.concatenate(
                examples.skip(full).take(last).batch(last, drop_remainder=True)
            )
    return distribution.shard(batches).prefetch(tf.data.AUTOTUNE)


def in_model_augmentation(config, image_shape):
    """The model's `augmentation` argument for `config.dataset`.

    None with host augmentation (the views come augmented); a random shift
    without flips for digits (a mirrored digit is another digit); else
    `"default"` (pad, crop and flip, or ImageNet's random resized crop).
    """
    if config.host_augmentation:
        return None
    if config.dataset == "digits":  # Digits must not be mirrored.
        from keras_pcl import data  # TensorFlow: not needed for the others.

        return data.digits_augmentation(image_shape[0])
    return "default"


def preprocessing_statistics(config, splits):
    """The per-channel `(mean, std)` that the model normalises images with.

    The published statistics for CIFAR and ImageNet; measured on (at most
    10,000 images of) the training split for digits and image folders.
    """
    from keras_pcl import data

    if config.dataset == "cifar10":
        return data.CIFAR10_MEAN, data.CIFAR10_STD
    if config.dataset == "cifar100":
        return data.CIFAR100_MEAN, data.CIFAR100_STD
    if config.dataset == "imagenet2012":
        return data.IMAGENET_MEAN, data.IMAGENET_STD
    return data.compute_mean_std(splits, max_examples=10000)
