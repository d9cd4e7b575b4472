"""Small generated image folders for the data tests."""

import os

import numpy as np
import tensorflow as tf

CLASSES = ("blue", "green", "red")  # sorted, the order of the labels


def write_png(path, image):
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


def make_folder(root, per_class=(6, 5, 4), size=8, seed=0):
    """Class folders of learnable PNGs: the dominant channel is the label.

    Returns {path: image} of every image written.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in zip(CLASSES, per_class):
        os.makedirs(os.path.join(root, name))
        channel = {"red": 0, "green": 1, "blue": 2}[name]
        for i in range(count):
            image = rng.integers(0, 120, size=(size, size, 3)).astype("uint8")
            image[..., channel] += 120
            path = os.path.join(root, name, f"{i:02d}.png")
            write_png(path, image)
            written[path] = image
    return written
