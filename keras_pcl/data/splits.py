"""A deterministic, class-balanced validation split held out from training.

tfds CIFAR has no validation split, and model selection must not touch the
test split (spec section 9), so the validation images are held out from the
training set. Keras' `image_dataset_from_directory(validation_split=...)`
shuffles the whole file list and cuts it once, so the classes of its
validation set are only roughly balanced; `balanced_split` is written by hand
to hold out the same fraction of every class exactly.
"""

import numpy as np


def balanced_split(labels, validation_split, seed=0):
    """Splits example indices into training and validation, per class.

    For every class `c` with `n_c` examples, `validation_split * n_c`
    (rounded half up) of them go to validation (500 of each CIFAR-10 class
    for 0.1). Which ones is a seeded random draw made separately for each
    class, so the split depends only on `labels` (in dataset order),
    `validation_split` and `seed`: the same on every machine, every backend
    and every run.

    Args:
        labels: 1-D array-like of integer class labels, in dataset order.
        validation_split: float in `[0, 1)`, the fraction of each class held
            out; 0 or None holds out nothing.
        seed: int >= 0, the seed of the draw.

    Returns:
        `(train_indices, validation_indices)`: two sorted int64 arrays of
        positions into `labels`, disjoint, together covering every example.

    Raises:
        ValueError: if `validation_split` is not in `[0, 1)`, if `seed` is
            not an int >= 0, if `labels` is
            not a 1-D array of non-negative integers, or if the split would
            leave a class with no training example.

    Example:

    >>> train, val = balanced_split([0, 0, 0, 0, 1, 1, 1, 1], 0.5, seed=0)
    >>> len(train), len(val)
    (4, 4)
    """
    validation_split = check_validation_split(validation_split)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0. Received: seed={seed!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or (
        labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0)
    ):
        raise ValueError(
            "`labels` must be a 1-D array of non-negative integer class "
            f"labels. Received: labels with dtype={labels.dtype} and "
            f"shape={labels.shape}"
        )
    train, validation = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = int(np.floor(validation_split * len(members) + 0.5))
        if count == len(members):
            raise ValueError(
                f"validation_split={validation_split} would hold out all "
                f"{len(members)} example(s) of class {int(c)}, leaving none "
                "to train on. Use a smaller `validation_split` or add "
                f"examples. Received: validation_split={validation_split}"
            )
        # One generator per class: a class's split does not change when
        # other classes gain or lose examples.
        rng = np.random.default_rng([int(seed), int(c)])
        chosen = rng.permutation(len(members))[:count]
        held_out = np.zeros(len(members), dtype=bool)
        held_out[chosen] = True
        validation.append(members[held_out])
        train.append(members[~held_out])
    if not train:
        return np.zeros(0, "int64"), np.zeros(0, "int64")
    return (
        np.sort(np.concatenate(train)).astype("int64"),
        np.sort(np.concatenate(validation)).astype("int64"),
    )


def check_validation_split(validation_split):
    """Returns `validation_split` as a float in [0, 1) or raises."""
    if validation_split is None:
        return 0.0
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float, np.floating))
        or not 0 <= validation_split < 1
    ):
        raise ValueError(
            "`validation_split` must be a float in [0, 1), the fraction of "
            "each class held out for validation (e.g. 0.1). "
            f"Received: validation_split={validation_split!r}"
        )
    return float(validation_split)
