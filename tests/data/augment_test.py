"""Host-side multi-view augmentation (the PCL step on views: folders_test)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_pcl import data


def shifted(image, dy, dx):
    """`image` moved by (dy, dx) with zero fill, in NumPy."""
    h, w, _ = image.shape
    p = max(abs(dy), abs(dx), 1)
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    return padded[p - dy : p - dy + h, p - dx : p - dx + w]


def is_pad_crop_flip_of(original, view, padding):
    for image in (original, original[:, ::-1]):
        for dy in range(-padding, padding + 1):
            for dx in range(-padding, padding + 1):
                if np.array_equal(shifted(image, dy, dx), view):
                    return True
    return False


def random_images(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=(n, size, size, 3)).astype("uint8")


def views_of(images, labels, num_views, augmentation="default", seed=0):
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    fn = data.view_function(
        augmentation, base=lambda im, s: data.pad_crop_flip(im, s, padding=1)
    )
    out = list(data.multi_view(ds, num_views, fn, seed=seed).as_numpy_iterator())
    return [v for v, _ in out], np.array([y for _, y in out])


def test_views_are_independent_pad_crop_flips_and_labels_unchanged():
    images, labels = random_images(16), np.arange(16, dtype="int32")
    views, out_labels = views_of(images, labels, num_views=3)
    np.testing.assert_array_equal(out_labels, labels)
    differ = 0
    for original, element in zip(images, views):
        assert len(element) == 3
        for view in element:
            assert view.dtype == np.uint8 and view.shape == (8, 8, 3)
            assert is_pad_crop_flip_of(original, view, padding=1)
        differ += not np.array_equal(element[0], element[1])
    # 18 equally likely (offset, flip) draws per view: almost all differ.
    assert differ >= 12


def test_seeded_views_repeat_across_runs():
    images, labels = random_images(4), np.zeros(4, "int32")
    a, _ = views_of(images, labels, 2, seed=5)
    b, _ = views_of(images, labels, 2, seed=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.stack(x), np.stack(y))


def test_random_resized_crop_and_eval_crop():
    image = tf.constant(random_images(1, size=40)[0][:, :30])  # 40x30
    view = data.random_resized_crop_flip(image, [1, 2], size=16)
    assert view.shape == (16, 16, 3) and view.dtype == tf.uint8
    # Shorter side 30 -> 32: 43x32 (40 * 32 / 30 = 42.7), centre crop 24.
    ramp = np.arange(40 * 30 * 3).reshape(40, 30, 3) % 256
    out = data.resize_center_crop(tf.constant(ramp, tf.uint8), 32, 24).numpy()
    full = tf.image.resize(ramp.astype("float32"), (43, 32)).numpy()
    expected = np.clip(np.round(full), 0, 255)[9:33, 4:28]
    np.testing.assert_array_equal(out, expected.astype("uint8"))


def test_keras_layer_policy_runs_in_tf_data_on_every_backend():
    # A Keras core preprocessing layer switches to TensorFlow inside
    # tf.data, whatever the backend.
    images, labels = random_images(4), np.arange(4, dtype="int32")
    layer = keras.layers.RandomBrightness(0.5, value_range=(0, 255), seed=1)
    views, out_labels = views_of(images, labels, 2, augmentation=layer)
    np.testing.assert_array_equal(out_labels, labels)
    assert views[0][0].dtype == np.uint8 and views[0][0].shape == (8, 8, 3)
    assert not all(
        is_pad_crop_flip_of(image, view[0], padding=1)
        for image, view in zip(images, views)
    )


# A tf.data pipeline whatever the backend; tracing RandAugment inside it
# takes minutes under JAX on 2 CPU cores (seconds under TensorFlow). The
# layer path is tested above on every backend.
@pytest.mark.backend_independent(on="tensorflow")
def test_named_core_policy():
    images, labels = random_images(2), np.arange(2, dtype="int32")
    views, _ = views_of(images, labels, 1, augmentation="randaugment")
    assert views[0][0].dtype == np.uint8 and views[0][0].shape == (8, 8, 3)


def test_keras_cv_policy_runs_in_tf_data_on_every_backend():
    pytest.importorskip("keras_cv")
    images, labels = random_images(4), np.arange(4, dtype="int32")
    views, _ = views_of(images, labels, 2, augmentation="keras_cv.augmix")
    assert views[0][0].dtype == np.uint8 and views[0][0].shape == (8, 8, 3)


def test_bad_policies():
    with pytest.raises(ValueError, match="Received: augmentation='cutout'"):
        data.view_function("cutout")
    with pytest.raises(ValueError, match="Received: augmentation=3"):
        data.view_function(3)
    with pytest.raises(ValueError, match="Received: num_views=0"):
        data.multi_view(tf.data.Dataset.range(2), 0, lambda im, s: im)
