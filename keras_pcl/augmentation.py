"""In-model training augmentation that compiles on every backend.

The paper's CIFAR augmentation is "pad 4 pixels, take a random 32x32 crop,
flip horizontally", drawn independently for every image. Keras' own
`keras.layers.RandomCrop` draws a single crop window for the whole batch
(Keras 3.15), so every image of a batch would be shifted the same way; the
small `RandomPadCrop` layer below draws one window per image with a gather,
which has static shapes and compiles with XLA/`jax.jit`. Flips use Keras'
`RandomFlip`, which already draws per image.
"""

import keras
from keras import ops

from keras_pcl.validation import check_int


@keras.saving.register_keras_serializable(package="keras_pcl")
class RandomPadCrop(keras.layers.Layer):
    """Zero-pads images and crops them back to their size at a random offset.

    Each image of the batch gets its own offset, uniform over the
    `(2 * padding + 1) ** 2` positions. Outside training it is the identity.

    Args:
        padding: int >= 1, pixels of zero padding on each side.
        seed: optional int, the seed of the layer's random generator.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Example:

    >>> import numpy as np
    >>> layer = RandomPadCrop(padding=4, seed=1)
    >>> layer(np.ones((2, 32, 32, 3)), training=True).shape
    (2, 32, 32, 3)
    """

    def __init__(self, padding=4, seed=None, data_format=None, **kwargs):
        check_int("padding", padding, minimum=1)
        super().__init__(**kwargs)
        self.padding = padding
        self.seed = seed
        self.data_format = data_format or keras.config.image_data_format()
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def call(self, images, training=True):
        if not training:
            return images
        images = ops.convert_to_tensor(images)
        if self.data_format == "channels_first":
            images = ops.transpose(images, (0, 2, 3, 1))
        _, height, width, channels = images.shape
        batch = ops.shape(images)[0]
        p = self.padding
        padded = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = keras.random.randint(
            (batch, 2), 0, 2 * p + 1, seed=self.seed_generator
        )
        rows = offsets[:, :1] + ops.arange(height)[None, :]
        cols = offsets[:, 1:] + ops.arange(width)[None, :]
        rows = ops.broadcast_to(
            rows[:, :, None, None], (batch, height, width + 2 * p, channels)
        )
        out = ops.take_along_axis(padded, rows, axis=1)
        cols = ops.broadcast_to(
            cols[:, None, :, None], (batch, height, width, channels)
        )
        out = ops.take_along_axis(out, cols, axis=2)
        if self.data_format == "channels_first":
            out = ops.transpose(out, (0, 3, 1, 2))
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "padding": self.padding,
                "seed": self.seed,
                "data_format": self.data_format,
            }
        )
        return config


def default_augmentation(image_size, seed=None):
    """The paper's CIFAR augmentation, scaled to `image_size`.

    Pad by `max(1, size // 8)` pixels (4 for 32x32 inputs), random crop back
    to the input size, random horizontal flip; each drawn per image.

    Args:
        image_size: int or `(height, width)` of the model's inputs.
        seed: optional int seed.

    Returns:
        A `keras.Sequential` of augmentation layers.

    Example:

    >>> aug = default_augmentation(32)
    >>> [layer.__class__.__name__ for layer in aug.layers]
    ['RandomPadCrop', 'RandomFlip']
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    padding = max(1, min(image_size) // 8)
    return keras.Sequential(
        [
            RandomPadCrop(padding, seed=seed, name="random_pad_crop"),
            keras.layers.RandomFlip("horizontal", seed=seed, name="random_flip"),
        ],
        name="augmentation",
    )
