"""tfds loaders on `tfds.testing.mock_data` (no download, no network)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_pcl import data


def collect(dataset):
    images, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(np.stack(x, 1) if isinstance(x, tuple) else x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def mock_examples(name, n):
    """The mocked examples, read straight from tfds, in stored order."""
    ds = tfds.builder(name).as_dataset(
        split="train", as_supervised=True, shuffle_files=False
    )
    images, labels = zip(*ds.as_numpy_iterator())
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar(name, num_classes):
    loader = getattr(data, name)
    with tfds.testing.mock_data(num_examples=120):
        images, labels = mock_examples(name, 120)
        result = loader(validation_split=0.25, batch_size=16, seed=0)
    counts = np.bincount(labels, minlength=num_classes)
    expected_val = np.floor(0.25 * counts + 0.5).astype(int)
    assert result.num_validation == expected_val.sum()
    assert result.num_train == 120 - expected_val.sum()
    assert len(result.class_names) == num_classes
    x_train, y_train = collect(result.train)
    x_val, y_val = collect(result.validation)
    assert x_train.dtype == np.uint8 and x_train.shape[1:] == (32, 32, 3)
    assert y_train.dtype == np.int32 and y_train.min() >= 0
    assert y_train.max() < num_classes
    assert np.bincount(y_val, minlength=num_classes).tolist() == expected_val.tolist()
    # Training and validation are disjoint and together are the train split.
    key = lambda x, y: x.tobytes() + bytes([y])  # noqa: E731
    train_keys = {key(x, y) for x, y in zip(x_train, y_train)}
    val_keys = {key(x, y) for x, y in zip(x_val, y_val)}
    assert not train_keys & val_keys
    assert train_keys | val_keys == {key(x, y) for x, y in zip(images, labels)}
    batches = [len(y) for _, y in result.train.as_numpy_iterator()]
    assert batches == [16] * (result.num_train // 16) + (
        [result.num_train % 16] if result.num_train % 16 else []
    )


def test_cifar10_views_and_normalisation():
    with tfds.testing.mock_data(num_examples=40):
        result = data.cifar10(
            num_views=3, batch_size=8, drop_remainder=True, validation_split=0.1
        )
    views, labels = next(result.train.as_numpy_iterator())
    assert len(views) == 3 and all(v.shape == (8, 32, 32, 3) for v in views)
    assert not np.array_equal(views[0], views[1])
    layer = data.normalization_layer("cifar10")
    out = np.asarray(layer(views[0].astype("float32")))
    expected = (views[0] - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert -2.1 < out.min() and out.max() < 2.2  # (0 - 125) / 63, (255 - 113) / 66


def test_imagenet_official_validation_split():
    with tfds.testing.mock_data(num_examples=12):
        result = data.imagenet2012(batch_size=5, num_views=2, image_size=32)
    assert (result.num_train, result.num_validation) == (12, 12)
    assert len(result.class_names) == 1000
    views, labels = next(result.train.as_numpy_iterator())
    assert len(views) == 2 and views[0].shape == (5, 32, 32, 3)
    assert views[0].dtype == np.uint8 and labels.dtype == np.int32
    x_val, y_val = collect(result.validation)
    assert x_val.shape == (12, 32, 32, 3) and x_val.dtype == np.uint8
    assert x_val.max() <= 255 and x_val.max() > 0
    assert [len(y) for _, y in result.train.as_numpy_iterator()] == [5, 5, 2]


def test_imagenet_without_augmentation_crops_like_validation():
    with tfds.testing.mock_data(num_examples=6):
        result = data.imagenet2012(
            batch_size=None, augmentation=None, shuffle=False, image_size=16
        )
        x_train, y_train = collect(result.train.batch(6))
        x_val, y_val = collect(result.validation.batch(6))
    # Mocked train and validation splits hold the same examples.
    np.testing.assert_array_equal(y_train, y_val)
    np.testing.assert_array_equal(x_train, x_val)
    assert x_train.shape == (6, 16, 16, 3)


def test_imagenet_held_out_validation():
    with tfds.testing.mock_data(num_examples=200):
        labels = np.array(
            [
                e["label"]
                for e in tfds.builder("imagenet2012")
                .as_dataset(split="train", shuffle_files=False)
                .as_numpy_iterator()
            ]
        )
        result = data.imagenet2012(batch_size=None, validation_split=0.4, image_size=16)
        counts = np.bincount(labels, minlength=1000)
        expected = np.floor(0.4 * counts + 0.5).astype(int)
        assert result.num_validation == expected.sum()
        assert result.num_train == 200 - expected.sum()
        _, y_val = collect(result.validation.batch(64))
        _, y_train = collect(result.train.batch(64))
    assert np.bincount(y_val, minlength=1000).tolist() == expected.tolist()
    assert np.bincount(y_train, minlength=1000).tolist() == (counts - expected).tolist()


def test_not_prepared_dataset_is_reported_without_network(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as error:
        data.cifar10(data_dir=str(tmp_path))
    assert "Received: data_dir=" in str(error.value)
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        data.imagenet2012(data_dir=str(tmp_path))


def test_download_true_prepares_then_loads():
    # mock_data makes download_and_prepare a no-op: the call path is tested.
    with tfds.testing.mock_data(num_examples=10):
        result = data.cifar100(download=True, validation_split=0.0, batch_size=4)
    assert result.validation is None and result.num_train == 10


def test_argument_errors():
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.cifar10(batch_size=0)
    with pytest.raises(ValueError, match="Received: num_views=1.5"):
        data.cifar10(num_views=1.5)
    with pytest.raises(ValueError, match="Received: validation_split=1.0"):
        data.cifar10(validation_split=1.0)
