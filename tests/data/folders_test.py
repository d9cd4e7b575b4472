"""`image_folder` and `list_image_folder` on generated and real folders."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pcl
from keras_pcl import data
from tests.data.images import make_folder
from tests.data.images import write_png
from tests.testing import tiny_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR10_TRAIN = os.path.join(ROOT, "..", "shared", "data", "cifar10", "train")


def collect(dataset):
    images, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def test_reads_every_image_once_with_its_label(image_dir):
    root, written = image_dir
    result = data.image_folder(root, validation_split=0.2, batch_size=4, seed=0)
    assert result.class_names == ("blue", "green", "red")
    # 0.2 * (6, 5, 4) rounded half up: 1, 1, 1 held out.
    assert (result.num_train, result.num_validation) == (12, 3)
    assert result.skipped_files == ()
    x_train, y_train = collect(result.train)
    x_val, y_val = collect(result.validation)
    assert x_train.dtype == np.uint8 and x_train.shape == (12, 8, 8, 3)
    assert y_train.dtype == np.int32
    assert np.bincount(y_val).tolist() == [1, 1, 1]
    by_bytes = {img.tobytes(): path for path, img in written.items()}
    seen = []
    all_images = np.concatenate([x_train, x_val])
    for image, label in zip(all_images, np.concatenate([y_train, y_val])):
        path = by_bytes[image.tobytes()]  # pixel-exact (PNG is lossless)
        assert result.class_names[label] == os.path.basename(os.path.dirname(path))
        seen.append(path)
    assert sorted(seen) == sorted(written)  # each image exactly once
    listing = data.list_image_folder(root, 0.2, seed=0)
    val_paths = sorted(by_bytes[x.tobytes()] for x in x_val)
    assert val_paths == sorted(listing.validation_paths)


def test_batches_and_drop_remainder(image_dir):
    root, _ = image_dir
    kept = data.image_folder(root, validation_split=0.2, batch_size=5)
    dropped = data.image_folder(
        root, validation_split=0.2, batch_size=5, drop_remainder=True
    )
    assert [len(y) for _, y in kept.train.as_numpy_iterator()] == [5, 5, 2]
    assert [len(y) for _, y in dropped.train.as_numpy_iterator()] == [5, 5]
    assert dropped.train.element_spec[0].shape == (5, 8, 8, 3)
    assert [len(y) for _, y in dropped.validation.as_numpy_iterator()] == [3]


def test_deterministic_epochs_with_a_seed(image_dir):
    root, _ = image_dir
    kwargs = dict(
        validation_split=0.2, batch_size=4, seed=7, num_views=2, deterministic=True
    )
    a = data.image_folder(root, **kwargs).train
    b = data.image_folder(root, **kwargs).train
    first = [x[0] for x, _ in a.as_numpy_iterator()]
    np.testing.assert_array_equal(
        np.concatenate(first), np.concatenate([x[0] for x, _ in b.as_numpy_iterator()])
    )
    second = [x[0] for x, _ in a.as_numpy_iterator()]  # a new epoch
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))


def test_corrupt_file_is_skipped_and_reported(tmp_path):
    root = os.path.join(tmp_path, "images")
    make_folder(root)
    bad = os.path.join(root, "green", "99.jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not an image")
    with open(os.path.join(root, "red", "._00.png"), "wb") as f:
        f.write(b"macOS metadata: hidden, so ignored, not reported")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        result = data.image_folder(root, validation_split=0.2, batch_size=32)
    assert result.skipped_files == (bad,)
    assert result.num_train + result.num_validation == 15
    with pytest.raises(ValueError, match="Received: on_corrupt='error'"):
        data.image_folder(root, on_corrupt="error")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: directory="):
        data.image_folder(os.path.join(tmp_path, "missing"))
    flat = os.path.join(tmp_path, "flat")
    os.makedirs(flat)
    write_png(os.path.join(flat, "a.png"), np.zeros((4, 4, 3), "uint8"))
    with pytest.raises(ValueError, match="one sub-folder per class"):
        data.image_folder(flat)
    root = os.path.join(tmp_path, "images")
    make_folder(root)
    os.makedirs(os.path.join(root, "yellow"))
    with open(os.path.join(root, "yellow", "notes.txt"), "w") as f:
        f.write("no images here")
    with pytest.raises(ValueError, match="'yellow' holds no image file"):
        data.list_image_folder(root)


def test_mixed_sizes_raise_or_resize(tmp_path):
    root = os.path.join(tmp_path, "images")
    make_folder(root)
    odd = os.path.join(root, "red", "zz.png")
    write_png(odd, np.full((12, 6, 3), 200, "uint8"))
    with pytest.raises(ValueError, match="Received: image_size=None") as error:
        data.image_folder(root)
    assert "zz.png is 12x6" in str(error.value)
    result = data.image_folder(
        root,
        image_size=(8, 8),
        validation_split=0.0,
        batch_size=32,
        interpolation="nearest",
    )
    assert result.validation is None
    images, _ = collect(result.train)
    assert images.shape == (16, 8, 8, 3)
    assert (images == 200).all(axis=(1, 2, 3)).sum() == 1  # resized, kept
    with pytest.raises(ValueError, match="Received: image_size=8"):
        data.image_folder(root, image_size=8)


def test_pcl_trains_on_host_views_from_a_folder(image_dir):
    root, _ = image_dir
    result = data.image_folder(
        root, validation_split=0.2, batch_size=6, num_views=2, seed=0
    )
    plain = data.image_folder(root, validation_split=0.2, num_views=None)
    views, labels = next(result.train.as_numpy_iterator())
    assert len(views) == 2 and views[0].shape == (6, 8, 8, 3)
    assert not np.array_equal(views[0], views[1])
    keras.utils.set_random_seed(0)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(),
        num_classes=3,
        num_peers=2,
        split_at="split",
        rampup_steps=2,
        preprocessing=data.normalization_layer(data.compute_mean_std(plain)),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    before = [w.copy() for w in model.peer_classifiers[0].get_weights()]
    history = model.fit(result.train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.peer_classifiers[0].get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # 12 training images in batches of 6: two steps on the views.
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == 2


@pytest.mark.skipif(
    not os.path.isdir(CIFAR10_TRAIN), reason="../shared/data/cifar10 is absent"
)
def test_real_cifar10_folder_split():
    listing = data.list_image_folder(CIFAR10_TRAIN, validation_split=0.1, seed=0)
    assert listing.class_names == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    assert len(listing.train_paths) + len(listing.validation_paths) == 50_000
    assert np.bincount(listing.validation_labels).tolist() == [500] * 10
    assert np.bincount(listing.train_labels).tolist() == [4500] * 10
    assert not set(listing.train_paths) & set(listing.validation_paths)
    sample = zip(listing.validation_paths[::97], listing.validation_labels[::97])
    for path, label in sample:
        assert os.path.basename(os.path.dirname(path)) == listing.class_names[label]
    again = data.list_image_folder(CIFAR10_TRAIN, validation_split=0.1, seed=0)
    np.testing.assert_array_equal(again.validation_paths, listing.validation_paths)
    # The documented constants describe these images (JPEG re-encoded, so
    # only close): a class-balanced sample of 1,000 decoded training images.
    sample = [
        tf.io.decode_jpeg(tf.io.read_file(p)).numpy() for p in listing.train_paths[::45]
    ]
    mean, std = data.compute_mean_std(np.stack(sample))
    np.testing.assert_allclose(mean, data.CIFAR10_MEAN, atol=3.0)
    np.testing.assert_allclose(std, data.CIFAR10_STD, atol=3.0)
