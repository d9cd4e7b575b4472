"""`balanced_split`: exact per-class counts, disjoint, deterministic."""

import numpy as np
import pytest

from keras_pcl.data import balanced_split


def labels_with_counts(counts, seed=0):
    labels = np.concatenate([[c] * n for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def test_holds_out_the_fraction_of_every_class():
    counts = [50, 30, 7, 11]
    labels = labels_with_counts(counts)
    train, val = balanced_split(labels, 0.2, seed=3)
    # 0.2 * n rounded half up: 10, 6, 1.4 -> 1, 2.2 -> 2.
    expected = [10, 6, 1, 2]
    assert np.bincount(labels[val], minlength=4).tolist() == expected
    assert np.bincount(labels[train], minlength=4).tolist() == [
        n - e for n, e in zip(counts, expected)
    ]
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(len(labels)))


def test_deterministic_and_seed_dependent():
    labels = labels_with_counts([40, 40, 40])
    a = balanced_split(labels, 0.25, seed=1)
    b = balanced_split(labels, 0.25, seed=1)
    c = balanced_split(labels, 0.25, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert set(a[1]) != set(c[1])


def test_a_class_split_ignores_the_other_classes():
    labels = labels_with_counts([20, 20], seed=0)
    _, val = balanced_split(labels, 0.5, seed=0)
    more = np.concatenate([labels, [2] * 10])  # a new class appended
    _, val_more = balanced_split(more, 0.5, seed=0)
    assert set(val) == set(val_more[more[val_more] < 2])


def test_no_validation():
    labels = labels_with_counts([5, 5])
    train, val = balanced_split(labels, None)
    assert len(train) == 10 and len(val) == 0


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.1", True])
def test_rejects_bad_fractions(value):
    with pytest.raises(ValueError, match="Received: validation_split="):
        balanced_split([0, 1], value)


def test_rejects_a_split_that_empties_a_class():
    with pytest.raises(ValueError, match="leaving none to train on"):
        balanced_split([0, 0, 0, 1], 0.6)


def test_rejects_non_integer_labels():
    with pytest.raises(ValueError, match="Received: labels"):
        balanced_split([0.5, 1.0], 0.1)
