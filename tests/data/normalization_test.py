"""Normalisation constants, the preprocessing layer and `compute_mean_std`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_pcl import data


def test_layer_standardises_raw_pixels():
    layer = data.normalization_layer("cifar10")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
    out = keras.ops.convert_to_numpy(layer(pixels.astype("float32")))
    mean = np.array([0.4914, 0.4822, 0.4465]) * 255
    std = np.array([0.2470, 0.2435, 0.2616]) * 255
    np.testing.assert_allclose(out, (pixels - mean) / std, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "name, mean, std",
    [
        ("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        ("imagenet2012", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_published_constants(name, mean, std):
    layer = data.normalization_layer(name)
    out = keras.ops.convert_to_numpy(layer(np.full((1, 1, 1, 3), 255.0 * 0.5)))
    np.testing.assert_allclose(
        out[0, 0, 0], (0.5 - np.array(mean)) / np.array(std), atol=2e-3
    )


def test_compute_mean_std_matches_numpy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 5, 5, 3)).astype("uint8")
    expected_mean = images.reshape(-1, 3).mean(0)
    expected_std = images.reshape(-1, 3).std(0)
    for source in (
        images,
        tf.data.Dataset.from_tensor_slices((images, np.zeros(10))).batch(3),
        tf.data.Dataset.from_tensor_slices(images),
    ):
        mean, std = data.compute_mean_std(source)
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-10)
        np.testing.assert_allclose(std, expected_std, rtol=1e-10)
    mean, _ = data.compute_mean_std(images, max_examples=4)
    np.testing.assert_allclose(mean, images[:4].reshape(-1, 3).mean(0))


def test_computed_statistics_give_the_layer_the_model_takes():
    images = np.random.default_rng(2).integers(0, 256, (6, 4, 4, 3))
    layer = data.normalization_layer(data.compute_mean_std(images))
    out = keras.ops.convert_to_numpy(layer(images.astype("float32")))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), 1, atol=1e-3)


def test_errors():
    with pytest.raises(ValueError, match="Received: statistics='mnist'"):
        data.normalization_layer("mnist")
    with pytest.raises(ValueError, match="positive std"):
        data.normalization_layer(((1, 2, 3), (1, 0, 1)))
    with pytest.raises(ValueError, match="holds no image"):
        empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 2, 2, 3)))
        data.compute_mean_std(empty)
    with pytest.raises(ValueError, match="Received: data of type list"):
        data.compute_mean_std([1, 2])
