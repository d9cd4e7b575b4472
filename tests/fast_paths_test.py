"""`keras_pcl.fast_paths`: the fused kernels compute what the Keras layers do.

Each fast path is compared with the Keras layer it stands in for (values,
gradients, moving statistics), and a whole PCL run with the fast paths with
one without them. Tolerances follow `tests/testing.py: float32_atol`: the
same float32 sums grouped otherwise differ by a few ulps of the magnitude
of what is summed. The convolutions call the same PyTorch kernel on the same
memory layout as Keras does, so they are compared for bitwise equality.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_pcl import fast_paths
from tests.testing import EPS32
from tests.testing import float32_atol

BACKEND = keras.backend.backend()
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch fast paths")
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow fast path"
)
HAS_FAST_PATHS = BACKEND in ("torch", "tensorflow")


def test_a_model_built_with_fast_paths_off_uses_keras_ops(monkeypatch):
    import keras_pcl
    from tests.testing import tiny_backbone

    # The policy's own choices: tests/speedups_test.py.
    monkeypatch.setenv("KERAS_PCL_FAST_PATHS", "0")
    model = keras_pcl.PeerCollaborativeModel(tiny_backbone(), 2, split_at="split")
    assert model._fast_paths is False
    monkeypatch.setenv("KERAS_PCL_FAST_PATHS", "1")
    model = keras_pcl.PeerCollaborativeModel(tiny_backbone(), 2, split_at="split")
    assert model._fast_paths is HAS_FAST_PATHS


def torch_tensor(array, requires_grad=False):
    import torch

    return torch.tensor(np.asarray(array, "float32"), requires_grad=requires_grad)


def grads(outputs, inputs, cotangent):
    import torch

    return [
        g.detach().numpy().copy()
        for g in torch.autograd.grad(outputs, inputs, grad_outputs=cotangent)
    ]


@torch_only
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": "same"},
        {"kernel_size": 3, "strides": 2, "padding": "same"},  # Asymmetric pad.
        {"kernel_size": 1, "strides": 2, "use_bias": False},
        {"kernel_size": 3, "dilation_rate": 2, "padding": "valid"},
        {"kernel_size": 3, "groups": 2, "activation": "relu", "padding": "same"},
        {"kernel_size": (3, 1), "strides": (1, 2), "padding": "same"},
    ],
    ids=["same", "stride2", "1x1", "dilated", "groups_relu", "rectangular"],
)
def test_conv2d_equals_the_keras_layer_bitwise(kwargs):
    layer = keras.layers.Conv2D(6, **kwargs, bias_initializer="glorot_uniform")
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(3, 9, 7, 4))
    layer.build(x_np.shape)
    x = torch_tensor(x_np, requires_grad=True)
    assert fast_paths.covers(layer, x, training=True)
    expected = layer(x)
    got = fast_paths.conv2d(layer, x)
    assert got.is_contiguous()
    np.testing.assert_array_equal(got.detach().numpy(), expected.detach().numpy())
    cotangent = torch_tensor(rng.normal(size=tuple(expected.shape)))
    variables = [x] + [w.value for w in layer.trainable_weights]
    for g, e in zip(
        grads(got, variables, cotangent), grads(expected, variables, cotangent)
    ):
        np.testing.assert_array_equal(g, e)


def bn_inputs(seed=0, shape=(4, 5, 5, 3)):
    rng = np.random.default_rng(seed)
    # Channels with different means and scales, as after a convolution.
    scale = np.array([0.5, 2.0, 7.0])[: shape[-1]]
    return rng.normal(size=shape) * scale + np.array([1.0, -3.0, 0.2])[: shape[-1]]


def forward_and_grads(fn, x_np, layer, cotangent):
    """`fn(x)` and the gradients of `sum(fn(x) * cotangent)` with respect to
    `x` and `layer.trainable_weights`, as NumPy arrays (torch or TensorFlow)."""
    if BACKEND == "torch":
        import torch

        x = torch_tensor(x_np, requires_grad=True)
        outputs = fn(x)
        variables = [x] + [w.value for w in layer.trainable_weights]
        gradients = torch.autograd.grad(
            outputs, variables, grad_outputs=torch_tensor(cotangent)
        )
        return outputs.detach().numpy(), [g.numpy() for g in gradients]
    import tensorflow as tf

    x = tf.constant(np.asarray(x_np, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = fn(x)
    variables = [x] + [w.value for w in layer.trainable_weights]
    gradients = tape.gradient(
        outputs, variables, output_gradients=tf.constant(cotangent, tf.float32)
    )
    return outputs.numpy(), [g.numpy() for g in gradients]


@pytest.mark.skipif(not HAS_FAST_PATHS, reason="no fast paths on this backend")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"scale": False},
        {"center": False},
        {"momentum": 0.9, "epsilon": 2e-5},  # Above cuDNN's floor (TF).
        {"axis": 1},
    ],
    ids=["default", "no_scale", "no_center", "momentum_epsilon", "channels_first"],
)
def test_batch_norm_equals_the_keras_layer(kwargs):
    if BACKEND == "tensorflow" and kwargs.get("axis") == 1:
        pytest.skip("FusedBatchNormV3 runs channels-last only (covers refuses)")
    x_np = bn_inputs()
    if kwargs.get("axis") == 1:
        x_np = np.ascontiguousarray(np.transpose(x_np, (0, 3, 1, 2)))
    layers = []
    for _ in range(2):
        layer = keras.layers.BatchNormalization(**kwargs)
        layer.build(x_np.shape)
        layers.append(layer)
    rng = np.random.default_rng(1)
    for a, b in zip(*(lay.weights for lay in layers)):  # Non-trivial state.
        value = rng.uniform(0.5, 1.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    keras_layer, fast_layer = layers
    initial = [ops.convert_to_numpy(w) for w in keras_layer.non_trainable_weights]
    assert fast_paths.covers(
        fast_layer, ops.convert_to_tensor(x_np, "float32"), training=True
    )
    cotangent = rng.normal(size=x_np.shape)
    expected, expected_grads = forward_and_grads(
        lambda x: keras_layer(x, training=True), x_np, keras_layer, cotangent
    )
    contiguous = []

    def fast(x):
        outputs = fast_paths.batch_norm(fast_layer, x)
        contiguous.append(BACKEND != "torch" or outputs.is_contiguous())
        return outputs

    got, got_grads = forward_and_grads(fast, x_np, fast_layer, cotangent)
    assert contiguous == [True]
    # Normalised values are O(1) times gamma (<= 1.5), plus beta: a few ulps
    # of ~5 (Keras' E[x^2] - E[x]^2 variance also rounds at the scale of
    # E[x^2], up to 49 + 9 here, relative to the variance).
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=float32_atol(5 * 58 / 0.25, k=8)
    )
    for g, e in zip(got_grads, expected_grads):
        # Sums over the 100 positions per channel of O(|x| / std * cotangent).
        np.testing.assert_allclose(
            g, e, rtol=0, atol=float32_atol(100 * 4 * 58 / 0.25, k=8)
        )
    for kv, fv, v0 in zip(
        keras_layer.non_trainable_weights,
        fast_layer.non_trainable_weights,
        initial,
    ):
        k, f = ops.convert_to_numpy(kv), ops.convert_to_numpy(fv)
        # moving <- momentum * moving + (1 - momentum) * statistic: the
        # moving value (<= 1.5) rounds, and the statistic, a sum over 100
        # positions of squares up to 58 (Keras: E[x^2] - E[x]^2), with
        # log2(100) growth, weighted by 1 - momentum.
        momentum = keras_layer.momentum
        atol = float32_atol(1.5 + (1 - momentum) * 58 * math.log2(100), k=16)
        np.testing.assert_allclose(f, k, rtol=0, atol=atol, err_msg=kv.name)
        assert np.max(np.abs(k - v0)) > 1000 * atol  # The update happened.


@pytest.mark.skipif(not HAS_FAST_PATHS, reason="no fast paths on this backend")
def test_batch_norm_moving_statistics_follow_keras_formula_in_float64():
    """Independent of Keras: the biased batch variance, in float64."""
    x_np = bn_inputs(seed=3, shape=(8, 4, 4, 3))
    layer = keras.layers.BatchNormalization(momentum=0.8)
    layer.build(x_np.shape)
    fast_paths.batch_norm(layer, ops.convert_to_tensor(x_np, "float32"))
    mean = x_np.mean(axis=(0, 1, 2))
    variance = x_np.var(axis=(0, 1, 2))  # ddof=0: biased.
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.moving_mean), 0.2 * mean, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.moving_variance),
        0.8 + 0.2 * variance,
        rtol=float32_atol(1, k=16),
    )


@tensorflow_only
def test_tf_batch_norm_of_one_value_per_channel_has_zero_variance():
    """n = 1: Keras' variance is 0; the kernel's unbiased one is not finite."""
    x_np = bn_inputs(seed=4, shape=(1, 1, 1, 3))
    keras_layer, fast_layer = (keras.layers.BatchNormalization() for _ in range(2))
    for layer in (keras_layer, fast_layer):
        layer.build(x_np.shape)
    x = ops.convert_to_tensor(x_np, "float32")
    assert fast_paths.covers(fast_layer, x, training=True)
    got = ops.convert_to_numpy(fast_paths.batch_norm(fast_layer, x))
    expected = ops.convert_to_numpy(keras_layer(x, training=True))
    np.testing.assert_array_equal(got, expected)  # beta: x - mean is 0.
    for kv, fv in zip(
        keras_layer.non_trainable_weights, fast_layer.non_trainable_weights
    ):
        f = ops.convert_to_numpy(fv)
        assert np.all(np.isfinite(f)), fv.name
        np.testing.assert_allclose(f, ops.convert_to_numpy(kv), rtol=EPS32, atol=0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(fast_layer.moving_variance), 0.99, rtol=EPS32
    )


def _half_ulp_steps(got, expected, dtype):
    """|got - expected| in units of the float16/bfloat16 spacing at `expected`."""
    import ml_dtypes

    half = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    expected = np.asarray(expected, np.float32)
    spacing = np.abs(
        np.nextafter(expected.astype(half), np.array(np.inf, half)).astype(np.float32)
        - expected.astype(half).astype(np.float32)
    )
    return np.abs(np.asarray(got, np.float32) - expected) / spacing


@tensorflow_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tf_batch_norm_under_mixed_precision_equals_the_keras_layer(dtype):
    """`mixed_bfloat16` / `mixed_float16`: Keras casts the half-precision
    input to float32, normalises and casts back; the kernel computes in
    float32 and rounds once to `dtype`. Both round float32 values that
    differ only in summation order (a few float32 ulps), so an output or
    input gradient may land on the neighbouring half-precision value where
    the float32 value lies next to a rounding boundary, and nowhere
    further: at most one spacing of `dtype`, and equal almost everywhere.
    The statistics, moving statistics and the gamma/beta gradients are
    float32 in both, with the float32 tolerances of the float32 test.
    """
    import tensorflow as tf

    x_np = bn_inputs(seed=5, shape=(8, 6, 6, 3))
    layers = []
    for _ in range(2):
        layer = keras.layers.BatchNormalization(dtype=f"mixed_{dtype}")
        layer.build(x_np.shape)
        layers.append(layer)
    rng = np.random.default_rng(2)
    for a, b in zip(*(lay.weights for lay in layers)):
        value = rng.uniform(0.5, 1.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    keras_layer, fast_layer = layers
    x = tf.constant(x_np, dtype)
    assert fast_paths.covers(fast_layer, x, training=True)
    assert not fast_paths.covers(fast_layer, tf.cast(x, "float32"), training=True)
    cotangent = tf.constant(rng.normal(size=x_np.shape), dtype)

    def run(fn, layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = fn(x)
        variables = [x] + [w.value for w in layer.trainable_weights]
        grads = tape.gradient(outputs, variables, output_gradients=cotangent)
        return outputs, grads

    expected, expected_grads = run(lambda t: keras_layer(t, training=True), keras_layer)
    got, got_grads = run(lambda t: fast_paths.batch_norm(fast_layer, t), fast_layer)
    assert got.dtype == expected.dtype == tf.as_dtype(dtype)
    assert got_grads[0].dtype == expected_grads[0].dtype == tf.as_dtype(dtype)
    for g, e in [(got, expected), (got_grads[0], expected_grads[0])]:
        steps = _half_ulp_steps(g.numpy(), e.numpy(), dtype)
        assert steps.max() <= 1.0
        assert np.mean(steps == 0) > 0.9
    for g, e in zip(got_grads[1:], expected_grads[1:]):
        # gamma/beta: float32 sums over the 288 positions per channel of
        # O(|x| / std * cotangent), the cotangent exact in `dtype`.
        np.testing.assert_allclose(
            g.numpy(), e.numpy(), rtol=0, atol=float32_atol(288 * 4 * 58 / 0.25, k=8)
        )
    for kv, fv in zip(
        keras_layer.non_trainable_weights, fast_layer.non_trainable_weights
    ):
        k, f = ops.convert_to_numpy(kv), ops.convert_to_numpy(fv)
        assert k.dtype == f.dtype == np.float32
        atol = float32_atol(1.5 + 0.01 * 58 * math.log2(288), k=16)
        np.testing.assert_allclose(f, k, rtol=0, atol=atol, err_msg=kv.name)


@tensorflow_only
def test_tf_mixed_bfloat16_pcl_trains_through_the_fused_kernel(monkeypatch):
    """Every batch norm of students and mean teachers takes the kernel."""
    import keras_pcl
    from tests.testing import colour_dataset
    from tests.testing import tiny_backbone

    seen = []
    kernel = fast_paths._tf_batch_norm

    def spy(layer, x):
        seen.append((layer.path, keras.backend.standardize_dtype(x.dtype)))
        return kernel(layer, x)

    monkeypatch.setattr(fast_paths, "_tf_batch_norm", spy)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = keras_pcl.PeerCollaborativeModel(
            tiny_backbone(), num_classes=3, num_peers=2, split_at="split"
        )
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = colour_dataset(16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    batch_norms = {
        layer.path
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert len(batch_norms) == 1 + 2 + 1 + 2  # Trunk, 2 peers; teachers alike.
    assert {path for path, _ in seen} == batch_norms
    assert {dtype for _, dtype in seen} == {"bfloat16"}


@tensorflow_only
def test_tf_covers_only_batch_norm_it_computes_exactly():
    x = ops.convert_to_tensor(np.ones((2, 4, 4, 3), "float32"))
    bn = keras.layers.BatchNormalization()
    bn.build(x.shape)
    assert fast_paths.covers(bn, x, training=True)
    assert not fast_paths.covers(bn, x, training=False)  # Moving statistics.
    frozen = keras.layers.BatchNormalization()
    frozen.build(x.shape)
    frozen.trainable = False
    assert not fast_paths.covers(frozen, x, training=True)  # Inference mode.
    refused = {
        "channels_first": keras.layers.BatchNormalization(axis=1),
        "tiny_epsilon": keras.layers.BatchNormalization(epsilon=1e-6),
        "renorm": keras.layers.BatchNormalization(renorm=True),
        "synchronized": keras.layers.BatchNormalization(synchronized=True),
        # Mixed precision is covered on its compute dtype's input only.
        "mixed_float16_on_float32": keras.layers.BatchNormalization(
            dtype="mixed_float16"
        ),
    }
    for name, layer in refused.items():
        layer.build(x.shape)
        assert not fast_paths.covers(layer, x, training=True), name
    # A float32 layer on a bfloat16 input (Keras would cast it to float32).
    assert not fast_paths.covers(bn, ops.cast(x, "bfloat16"), training=True)
    flat = keras.layers.BatchNormalization()
    flat.build((2, 3))
    assert not fast_paths.covers(flat, ops.ones((2, 3)), training=True)
    # The graph already fuses nothing here that a fast path would help with.
    conv = keras.layers.Conv2D(2, 3)
    conv.build(x.shape)
    for layer, inputs in [
        (conv, x),
        (keras.layers.ReLU(), x),
        (keras.layers.Add(), [x, x]),
    ]:
        assert not fast_paths.covers(layer, inputs, training=True)


@torch_only
def test_covers_refuses_what_it_does_not_compute_exactly():
    x = torch_tensor(np.ones((2, 4, 4, 3)))
    conv = keras.layers.Conv2D(2, 3)
    conv.build(x.shape)
    assert fast_paths.covers(conv, x, training=False)  # A conv has no mode.
    first = keras.layers.Conv2D(2, 3, data_format="channels_first")
    first.build((2, 3, 4, 4))
    assert not fast_paths.covers(first, torch_tensor(np.ones((2, 3, 4, 4))), True)
    half = keras.layers.Conv2D(2, 3, dtype="mixed_float16")
    half.build(x.shape)
    assert not fast_paths.covers(half, x, training=True)
    regularized = keras.layers.Conv2D(2, 3, activity_regularizer="l2")
    regularized.build(x.shape)
    assert not fast_paths.covers(regularized, x, training=True)
    bn = keras.layers.BatchNormalization()
    bn.build(x.shape)
    assert fast_paths.covers(bn, x, training=True)
    assert not fast_paths.covers(bn, x, training=False)  # Moving statistics.
    assert not fast_paths.covers(bn, torch_tensor(np.ones((1, 1, 1, 3))), True)
    bn.trainable = False
    assert not fast_paths.covers(bn, x, training=True)  # Inference mode.
    across = keras.layers.BatchNormalization(axis=2)
    across.build(x.shape)
    assert not fast_paths.covers(across, x, training=True)
    assert not fast_paths.covers(keras.layers.Dense(2), x, training=True)


@torch_only
@pytest.mark.parametrize(
    "make, arity",
    [
        (lambda: keras.layers.ReLU(), 1),
        (lambda: keras.layers.Activation("relu"), 1),
        (lambda: keras.layers.Add(), 2),
        (lambda: keras.layers.Add(), 3),
    ],
    ids=["relu", "activation_relu", "add2", "add3"],
)
def test_elementwise_equals_the_keras_layer_bitwise(make, arity):
    # The same backend op on the same tensors: equal values and gradients,
    # bit for bit (exact zeros included, where ReLU's gradient is 0).
    layer = make()
    rng = np.random.default_rng(1)
    inputs = [
        torch_tensor(
            np.where(
                rng.random((3, 4, 4, 5)) < 0.1, 0.0, rng.normal(size=(3, 4, 4, 5))
            ),
            True,
        )
        for _ in range(arity)
    ]
    x = inputs if arity > 1 else inputs[0]
    assert fast_paths.covers(layer, x, training=True)
    expected = layer(x)
    got = fast_paths.call(layer, x)
    np.testing.assert_array_equal(got.detach().numpy(), expected.detach().numpy())
    cotangent = torch_tensor(rng.normal(size=tuple(expected.shape)))
    for g, e in zip(grads(got, inputs, cotangent), grads(expected, inputs, cotangent)):
        np.testing.assert_array_equal(g, e)


@torch_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    "make",
    [
        lambda d: keras.layers.Conv2D(6, 3, padding="same", dtype=d),
        lambda d: keras.layers.Conv2D(
            6, 3, strides=2, padding="same", bias_initializer="glorot_uniform", dtype=d
        ),
        lambda d: keras.layers.BatchNormalization(dtype=d),
        lambda d: keras.layers.ReLU(dtype=d),
        lambda d: keras.layers.Add(dtype=d),
    ],
    ids=["conv", "conv_stride2_bias", "batch_norm", "relu", "add"],
)
def test_torch_paths_under_mixed_precision_equal_the_keras_layers(make, dtype):
    """`mixed_bfloat16` / `mixed_float16`: the half-precision activations
    go in, float32 variables stay float32.

    Keras and the fast path compute the same half-precision values from
    the same half-precision inputs and variables (cast alike) in another
    memory layout (the convolution) or with float32 statistics computed in
    another order (batch norm), then round to `dtype`: at most one
    spacing of `dtype` apart, and equal almost everywhere. Gradients with
    respect to the half-precision inputs and to the convolution's kernel
    and bias (cast from float32 in the forward pass, so rounded to `dtype`
    in the backward pass) alike; batch norm's gamma/beta gradients are
    float32 sums, compared with the float32 tolerance of the float32 test.
    """
    import torch

    half = getattr(torch, dtype)
    layer = make(f"mixed_{dtype}")
    rng = np.random.default_rng(3)
    arity = 2 if isinstance(layer, keras.layers.Add) else 1
    shape = (4, 6, 6, 3)
    layer.build([shape] * arity if arity > 1 else shape)
    for weight in layer.trainable_weights:  # Non-trivial gamma and beta.
        weight.assign(rng.uniform(0.5, 1.5, size=weight.shape).astype("float32"))
    inputs = [
        torch.tensor(bn_inputs(seed=6 + i, shape=shape), dtype=half, requires_grad=True)
        for i in range(arity)
    ]
    x = inputs if arity > 1 else inputs[0]
    assert fast_paths.covers(layer, x, training=True)
    float32_inputs = [t.detach().float() for t in inputs]
    assert not fast_paths.covers(
        layer, float32_inputs if arity > 1 else float32_inputs[0], training=True
    )
    moving = [ops.convert_to_numpy(w).copy() for w in layer.non_trainable_weights]
    expected = layer(x, training=True)
    got = fast_paths.call(layer, x)
    assert got.dtype == expected.dtype == half
    cotangent = torch.tensor(rng.normal(size=tuple(expected.shape)), dtype=half)
    variables = inputs + [w.value for w in layer.trainable_weights]
    got_grads = torch.autograd.grad(got, variables, grad_outputs=cotangent)
    expected_grads = torch.autograd.grad(expected, variables, grad_outputs=cotangent)

    def numpy(t):
        return t.detach().float().numpy()

    batch_norm = isinstance(layer, keras.layers.BatchNormalization)
    # Everything but batch norm's gamma/beta gradients is in `dtype` (or,
    # for the kernel and bias, `dtype` values cast back to float32).
    in_half = len(variables) if not batch_norm else arity
    half_precision = [(got, expected)] + list(zip(got_grads, expected_grads))[:in_half]
    for g, e in half_precision:
        steps = _half_ulp_steps(numpy(g), numpy(e), dtype)
        assert steps.max() <= 1.0
        assert np.mean(steps == 0) > 0.9
    if batch_norm:
        for g, e in zip(got_grads[arity:], expected_grads[arity:]):
            # As the TensorFlow test: 144 positions per channel.
            np.testing.assert_allclose(
                numpy(g), numpy(e), rtol=0, atol=float32_atol(144 * 4 * 58 / 0.25, k=8)
            )
        # The moving statistics: Keras' formula on float32 statistics. The
        # layer was called twice (Keras, then the fast path): compare the
        # fast path's update with a float64 one of the same input.
        x64 = inputs[0].detach().double().numpy()
        mean, variance = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
        after_keras = [m * 0.99 + s * 0.01 for m, s in zip(moving, (mean, variance))]
        for weight, start, statistic in zip(
            layer.non_trainable_weights, after_keras, (mean, variance)
        ):
            np.testing.assert_allclose(
                ops.convert_to_numpy(weight),
                start * 0.99 + statistic * 0.01,
                rtol=0,
                atol=float32_atol(1.5 + 0.01 * 58 * math.log2(144), k=16),
            )


@torch_only
def test_elementwise_covers_only_the_plain_layers():
    x = torch_tensor(np.ones((2, 4, 4, 3)))
    assert not fast_paths.covers(keras.layers.ReLU(max_value=6.0), x, True)
    assert not fast_paths.covers(keras.layers.ReLU(negative_slope=0.1), x, True)
    assert not fast_paths.covers(keras.layers.ReLU(threshold=0.5), x, True)
    assert not fast_paths.covers(keras.layers.Activation("gelu"), x, True)
    assert not fast_paths.covers(keras.layers.ReLU(dtype="mixed_float16"), x, True)
    add = keras.layers.Add()
    assert not fast_paths.covers(add, [x, torch_tensor(np.ones((2, 4, 1, 3)))], True)
    assert not fast_paths.covers(add, [x], True)  # Keras raises for one input.
    assert not fast_paths.covers(keras.layers.Subtract(), [x, x], True)


@torch_only
def test_ema_update_is_bitwise_the_generic_update():
    from keras_pcl.mean_teacher import update_mean_teacher

    rng = np.random.default_rng(0)
    shapes = [(3, 3, 2, 4), (4,), (5, 2)]
    students = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    values = [rng.normal(size=s).astype("float32") for s in shapes]
    generic = [keras.Variable(v) for v in values]
    fast = [keras.Variable(v) for v in values]
    for step in (0, 1, 5, 10**5):
        update_mean_teacher(students, generic, step, 0.99)
        update_mean_teacher(students, fast, step, 0.99, fast=True)
        for g, f in zip(generic, fast):
            np.testing.assert_array_equal(
                ops.convert_to_numpy(f), ops.convert_to_numpy(g)
            )
    assert not np.array_equal(ops.convert_to_numpy(fast[0]), values[0])


@torch_only
def test_ema_update_follows_the_spec_in_float64():
    from keras_pcl.mean_teacher import update_mean_teacher

    rng = np.random.default_rng(1)
    student = rng.normal(size=(6, 5)).astype("float32")
    teacher = rng.normal(size=(6, 5)).astype("float32")
    variable = keras.Variable(teacher)
    update_mean_teacher([keras.Variable(student)], [variable], 3, 0.999, fast=True)
    alpha = 1 - 1 / 4  # min(1 - 1/(k + 1), 0.999) at k = 3.
    expected = alpha * teacher.astype("float64") + (1 - alpha) * student
    # Three float32 roundings of values of size max(|teacher|, |student|).
    atol = 3 * EPS32 * np.maximum(np.abs(teacher), np.abs(student)).max()
    np.testing.assert_allclose(ops.convert_to_numpy(variable), expected, atol=atol)


def dropout_backbone():
    """Not fusable (dropout draws per batch), but one view runs it as is."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="split")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def assert_trained_alike(
    fast_logs, plain_logs, start, fast, plain, paths, trainable, summed_terms
):
    """A few training steps with the fast paths equal those without.

    Logged terms: sums as large as the cross-entropies plus the KD terms'
    log-probabilities (kd_magnitude), 16 ulps of margin. Weights: SGD steps
    summed in another order (`summed_terms` products per gradient entry):
    each tensor's own rounding plus that of the updates, whose size is the
    largest update of any trainable weight (a bias whose gradient is only
    rounding, like ONE's gate bias, moves by 1e-9 either way), as in
    tests/fusion_test.py.
    """
    from tests.testing import kd_magnitude

    magnitude = abs(plain_logs["ce"][0]) + kd_magnitude(3.0, 3, 2 * 3)
    for key in plain_logs:
        np.testing.assert_allclose(
            fast_logs[key],
            plain_logs[key],
            rtol=0,
            atol=float32_atol(magnitude, k=16),
            err_msg=key,
        )
    largest_step = max(
        np.max(np.abs(b - w0)) for w0, b, t in zip(start, plain, trainable) if t
    )
    moved = 0
    for path, a, b, w0 in zip(paths, fast, plain, start):
        scale = np.max(np.abs(b)) + math.log2(summed_terms) * largest_step
        atol = float32_atol(scale, k=16)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=path)
        moved += bool(np.max(np.abs(b - w0)) > 100 * atol)
    assert moved > len(start) / 3  # The runs trained, far beyond the tolerance.


@pytest.mark.skipif(not HAS_FAST_PATHS, reason="no fast paths on this backend")
@pytest.mark.parametrize(
    "method, backbone, jit_compile",
    [
        ("pcl", "resnet8", "auto"),
        ("one", "resnet8", "auto"),
        ("dml", "resnet8", "auto"),
        ("pcl", "dropout", "auto"),
        pytest.param(
            "pcl",
            "resnet8",
            True,
            marks=pytest.mark.skipif(
                BACKEND != "tensorflow", reason="XLA: TensorFlow's fast path"
            ),
        ),
    ],
)
def test_training_with_fast_paths_equals_training_without(
    method, backbone, jit_compile, monkeypatch
):
    """Three steps with and without the fast paths (ResNet-8, or with dropout)."""
    import keras_pcl
    from keras_pcl.methods import build_method
    from tests.testing import colour_dataset

    def run(flag):
        monkeypatch.setenv("KERAS_PCL_FAST_PATHS", flag)
        keras.utils.set_random_seed(11)
        if backbone == "dropout":
            model = build_method(
                method, dropout_backbone(), num_classes=3, num_peers=3, split_at="split"
            )
        else:
            network = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(8, 8, 3))
            model = build_method(method, network, num_classes=3, num_peers=3)
        x, y = colour_dataset(24, image_size=8, seed=0)
        start = [ops.convert_to_numpy(w) for w in model.weights]
        # lr 0.01: see tests/fusion_test.py `pcl_run` (0.1 is chaotic here).
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
            jit_compile=jit_compile,
        )
        logs = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return (
            model,
            logs.history,
            start,
            [ops.convert_to_numpy(w) for w in model.weights],
        )

    fused_batch_norms = []
    batch_norm = fast_paths.batch_norm

    def counted_batch_norm(layer, x):
        fused_batch_norms.append(layer.name)
        return batch_norm(layer, x)

    monkeypatch.setattr(fast_paths, "batch_norm", counted_batch_norm)
    fast_model, fast_logs, start, fast = run("1")
    assert fast_model._fast_paths and fast_model._fast_runners
    assert all(r is not None for r in fast_model._fast_runners.values())
    assert fused_batch_norms  # The fused kernel ran (traced, on TensorFlow).
    fused_batch_norms.clear()
    plain_model, plain_logs, plain_start, plain = run("0")
    assert not fused_batch_norms
    assert not plain_model._fast_runners
    for a, b in zip(start, plain_start):
        np.testing.assert_array_equal(a, b)
    assert_trained_alike(
        fast_logs,
        plain_logs,
        start,
        fast,
        plain,
        paths=[v.path for v in fast_model.weights],
        trainable=[v.trainable for v in fast_model.weights],
        summed_terms=8 * 8 * 8,
    )


@torch_only
def test_torch_compile_traces_keras_ops_and_matches_eager(monkeypatch):
    """`jit_compile=True` (torch.compile): the fast paths step aside.

    Their Python conditions would meet dynamo's symbolic shapes (measured:
    "cannot determine truth value of Relational"); torch.compile fuses
    Keras' own ops itself. One PCL step, compiled vs eager.
    """
    import keras_pcl
    from tests.testing import colour_dataset
    from tests.testing import kd_magnitude
    from tests.testing import tiny_backbone

    def run(jit_compile):
        keras.utils.set_random_seed(5)
        model = keras_pcl.PeerCollaborativeModel(
            tiny_backbone(), 3, num_peers=2, split_at="split"
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit_compile)
        x, y = colour_dataset(8, seed=1)
        logs = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return logs.history

    compiled, eager = run(True), run(False)
    # The same float32 sums, fused by inductor in another order: ulps of
    # the cross-entropies plus the 2m KD terms (kd_magnitude).
    magnitude = abs(eager["ce"][0]) + kd_magnitude(3.0, 3, 2 * 2)
    for key in ("loss", "ce", "pe", "pm"):
        np.testing.assert_allclose(
            compiled[key], eager[key], rtol=0, atol=float32_atol(magnitude, k=16)
        )


@tensorflow_only
def test_fused_batch_norm_under_mirrored_strategy_equals_keras_ops(tmp_path):
    """Two replicas (`tf.distribute.MirroredStrategy`): the same two steps.

    Each replica normalises its own half of the batch with its own
    statistics either way (Keras' `BatchNormalization` is not synchronised
    by default), and the moving statistics are updated the same way; only
    the float32 rounding of the fused kernel differs.
    """
    from tests.testing import run_npz_script

    script = __file__.replace("fast_paths_test.py", "mirrored_batch_norm_step.py")
    arrays = run_npz_script(script, tmp_path / "mirrored.npz")
    assert int(arrays["fast_fused_batch_norms"]) > 0  # The fused kernel ran.
    assert int(arrays["plain_fused_batch_norms"]) == 0
    paths = list(arrays["plain_paths"])
    assert len(paths) == len(arrays["fast_paths"])
    assert any("moving_variance" in p for p in paths)
    runs = {}
    for run in ("fast", "plain"):
        prefix = f"{run}_log_"
        logs = {
            k[len(prefix) :]: arrays[k] for k in arrays.files if k.startswith(prefix)
        }
        start = [arrays[f"{run}_initial_{i}"] for i in range(len(paths))]
        final = [arrays[f"{run}_weight_{i}"] for i in range(len(paths))]
        runs[run] = logs, start, final
    assert "pe" in runs["plain"][0] and "pm" in runs["plain"][0]
    for a, b in zip(runs["fast"][1], runs["plain"][1]):
        np.testing.assert_array_equal(a, b)
    assert_trained_alike(
        runs["fast"][0],
        runs["plain"][0],
        runs["plain"][1],
        runs["fast"][2],
        runs["plain"][2],
        paths=paths,
        trainable=list(arrays["plain_trainable"]),
        # Per gradient entry: 8 images x 64 positions per replica, then the
        # two replicas.
        summed_terms=16 * 8 * 8,
    )
