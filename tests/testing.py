"""Shared helpers for the test suite (the suite runs once per backend)."""

import math
import os
import subprocess
import sys

import keras
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ~ 1.19e-7, one float32 ulp of 1.0


def tiny_backbone(image_size=8, channels=3, name="tiny", own_rescaling=False):
    """conv-BN-ReLU trunk, conv-BN-ReLU-pool peer: the smallest real split.

    With `own_rescaling`, it begins with its own `Rescaling(1 / 255)` (named
    `own_rescaling`), like the backbones that carry their preprocessing.
    """
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    if own_rescaling:
        x = keras.layers.Rescaling(1 / 255, name="own_rescaling")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(x)
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


def training_arrays(model, history):
    """A trained model's logs and every variable, as `.npz`-ready arrays.

    Keys `log_<name>` and `weight_<i>_<path>`; compared by
    `assert_trained_bitwise_alike`.
    """
    arrays = {f"log_{k}": np.asarray(v) for k, v in history.history.items()}
    for i, variable in enumerate(model.variables):
        arrays[f"weight_{i}_{variable.path}"] = keras.ops.convert_to_numpy(variable)
    return arrays


def assert_trained_bitwise_alike(a, b):
    """Two runs' `training_arrays` (loaded `.npz` files) are bitwise equal.

    For settings that change where or when the same ops run, never what
    they compute: every log and every weight (students, mean teachers,
    moving statistics) must match exactly.
    """
    names = [k for k in a.files if k.startswith(("weight_", "log_"))]
    assert sorted(names) == sorted(
        k for k in b.files if k.startswith(("weight_", "log_"))
    )
    assert any("mean_teacher" in n for n in names)
    assert any("moving_variance" in n for n in names)
    for name in names:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def float32_atol(magnitude, k):
    """Absolute tolerance for the same float32 math evaluated in another order.

    Two evaluations of the same formula that differ only in how sums are
    grouped (another SIMD width, AVX2 vs AVX-512, FMA or not, oneDNN vs Eigen
    kernels, XLA fusion, two replicas whose partial sums are all-reduced
    instead of one device) differ by a few float32 ulps of the *magnitude of
    the quantities summed*, not of the result: a float32 sum of terms with
    absolute values adding up to M has a rounding error of about
    eps32 * M (blocked/pairwise summation, errors of random sign; the
    worst-case bound grows with log2 of the number of terms). A result
    that is a small difference of large terms (a KL divergence between
    near-equal distributions, a loss term that is a small part of the total)
    therefore has a large *relative* error, and an `rtol` of the result alone
    is the wrong tolerance for it.

    Returns `k * EPS32 * magnitude`; `k` is the number of ulps allowed and
    every caller states why its `magnitude` and `k` fit what it compares.
    """
    return k * EPS32 * float(magnitude)


def kd_magnitude(temperature, num_classes, num_terms=1):
    """Magnitude of the float32 quantities summed in `num_terms` KD_T terms.

    `KD_T = T**2 * mean_b sum_c p_c (log p_c - log q_c)` for softened
    distributions close to uniform: each log-probability is about
    `log(C)` in size, so each KD term is a small difference of two sums
    of size about `log(C)` (entropy and cross-entropy) scaled by `T**2`,
    and its rounding error is eps32 times `T**2 * 2 * log(C)`, whatever
    the size of the KD term itself (often 1e-3 of that).
    """
    return num_terms * temperature**2 * 2.0 * math.log(num_classes)


def sgd_weights_atol(final, initial, summed_terms, k=16.0):
    """Absolute tolerance for weights after a few float32 SGD steps.

    Compares weights trained by the same steps in another summation order.
    Two sources of difference: rounding the weight itself (eps32 * |w|) and
    the rounding error of the updates, `lr * gradient`. Every gradient entry
    is a sum over `summed_terms` products (batch x spatial positions) of
    both signs, so its error is relative to the size of those products,
    which can exceed the (partly cancelling) net update; the net update
    `max|w - w_0|` stands in for their size and `log2(summed_terms)` for the
    growth with their number and for the cancellation. The differences also
    pass through the later steps (momentum, the mean teacher). With `k`
    ulps of margin:

        atol = k * eps32 * (max|w| + log2(summed_terms) * max|w - w_0|)

    A wrong update (a doubled or dropped gradient) moves a weight tensor by
    about `max|w - w_0|` itself, hundreds of times this tolerance or more.
    """
    final = np.asarray(final, dtype="float64")
    initial = np.asarray(initial, dtype="float64")
    step = np.max(np.abs(final - initial), initial=0.0)
    scale = np.max(np.abs(final), initial=0.0) + math.log2(summed_terms) * step
    return float(k * EPS32 * scale)


def run_npz_script(script, out, env=None, timeout=300, args=()):
    """Runs `python script out *args` in a fresh process; loads the `.npz` it wrote.

    For checks that need a process of their own (devices or thread pools
    fixed before the backend starts). `env` adds to this process's
    environment; TensorFlow's native logging is off. A non-zero exit fails
    the test with the end of the script's stderr.
    """
    result = subprocess.run(
        [sys.executable, script, str(out), *args],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)
