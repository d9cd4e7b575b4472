"""Per-image pad-and-crop and the default augmentation."""

import keras
import numpy as np
import pytest

from keras_pcl.augmentation import RandomPadCrop
from keras_pcl.augmentation import default_augmentation


def shifted(image, dy, dx):
    """`image` moved by (dy, dx) with zero fill: pad-and-crop, in NumPy."""
    h, w, _ = image.shape
    p = max(abs(dy), abs(dx), 1)
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    return padded[p - dy : p - dy + h, p - dx : p - dx + w]


def matching_offsets(original, crop, padding, allow_flip=False):
    found = []
    candidates = [original, original[:, ::-1]] if allow_flip else [original]
    for image in candidates:
        for dy in range(-padding, padding + 1):
            for dx in range(-padding, padding + 1):
                if np.array_equal(shifted(image, dy, dx), crop):
                    found.append((dy, dx))
    return found


def random_images(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=(n, size, size, 3)).astype("float32")


def test_each_crop_is_a_shift_of_its_own_image():
    images = random_images(32)
    out = keras.ops.convert_to_numpy(
        RandomPadCrop(padding=2, seed=3)(images, training=True)
    )
    offsets = []
    for original, crop in zip(images, out):
        found = matching_offsets(original, crop, padding=2)
        assert len(found) == 1
        offsets.append(found[0])
    # Drawn per image, not once per batch (as keras.layers.RandomCrop does).
    assert len(set(offsets)) > 5


def test_offsets_cover_every_position():
    images = np.tile(random_images(1), (400, 1, 1, 1))
    out = keras.ops.convert_to_numpy(
        RandomPadCrop(padding=1, seed=5)(images, training=True)
    )
    seen = {matching_offsets(images[0], crop, padding=1)[0] for crop in out}
    assert len(seen) == 9


def test_identity_outside_training():
    images = random_images(4)
    out = RandomPadCrop(padding=4)(images, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), images)


def test_channels_first():
    images = random_images(6)
    layer = RandomPadCrop(padding=2, seed=1, data_format="channels_first")
    out = keras.ops.convert_to_numpy(
        layer(np.transpose(images, (0, 3, 1, 2)), training=True)
    )
    for original, crop in zip(images, np.transpose(out, (0, 2, 3, 1))):
        assert matching_offsets(original, crop, padding=2)


def test_default_augmentation_is_pad_crop_flip():
    images = random_images(32, size=32)
    augmentation = default_augmentation(32, seed=2)
    out = keras.ops.convert_to_numpy(augmentation(images, training=True))
    flips = 0
    for original, view in zip(images, out):
        plain = matching_offsets(original, view, padding=4)
        flipped = matching_offsets(original[:, ::-1], view, padding=4)
        assert plain or flipped
        flips += bool(flipped and not plain)
    assert 0 < flips < 32


def test_two_calls_draw_independently():
    images = random_images(16)
    layer = RandomPadCrop(padding=2, seed=7)
    a = keras.ops.convert_to_numpy(layer(images, training=True))
    b = keras.ops.convert_to_numpy(layer(images, training=True))
    assert not np.array_equal(a, b)


def test_config_round_trip():
    layer = RandomPadCrop(padding=3, seed=11, name="crop")
    clone = RandomPadCrop.from_config(layer.get_config())
    assert (clone.padding, clone.seed, clone.name) == (3, 11, "crop")


@pytest.mark.parametrize("padding", [0, -1, 2.5])
def test_bad_padding_raises(padding):
    with pytest.raises(ValueError, match=f"padding={padding}"):
        RandomPadCrop(padding=padding)
