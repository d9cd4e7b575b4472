"""Shared helpers for the test suite (the suite runs once per backend)."""

import keras
import numpy as np


def tiny_backbone(image_size=8, channels=3, name="tiny"):
    """conv-BN-ReLU trunk, conv-BN-ReLU-pool peer: the smallest real split."""
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="split")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


def colour_dataset(n, image_size=8, seed=0):
    """A small learnable problem: which colour channel dominates a texture.

    Labels are invariant to crops and flips, so the default augmentation
    keeps them valid. Returns uint8 images and int labels in {0, 1, 2}.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    images = rng.uniform(0, 140, size=(n, image_size, image_size, 3))
    images[np.arange(n), :, :, labels] += 100
    return images.astype("uint8"), labels.astype("int32")


def gradients(fn, tensors):
    """Gradients of the scalar `fn(*tensors)` w.r.t. each tensor (NumPy).

    A gradient that the backend reports as missing (no path) is zeros.
    """
    backend = keras.backend.backend()
    arrays = [np.asarray(t, dtype="float32") for t in tensors]
    if backend == "jax":
        import jax

        grads = jax.grad(lambda *a: fn(*a), argnums=tuple(range(len(arrays))))(*arrays)
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            for v in variables:
                tape.watch(v)
            value = fn(*variables)
        grads = tape.gradient(value, variables)
        return [
            np.zeros_like(a) if g is None else g.numpy() for a, g in zip(arrays, grads)
        ]
    if backend == "torch":
        import torch

        variables = [torch.tensor(a, requires_grad=True) for a in arrays]
        value = fn(*variables)
        grads = torch.autograd.grad(value, variables, allow_unused=True)
        return [
            np.zeros_like(a) if g is None else g.detach().cpu().numpy()
            for a, g in zip(arrays, grads)
        ]
    raise NotImplementedError(backend)


def weights_of(layer):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]
