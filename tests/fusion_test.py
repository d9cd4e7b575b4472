"""`keras_pcl.fusion`: fused views equal separate training-mode passes.

`ViewBatchedNetwork(network, m)(views)` must give what
`[network(v, training=True) for v in views]` gives: outputs, gradients with
respect to every weight and to the inputs, and the batch-norm moving
statistics after the `m` updates. Only the order of float32 reductions may
differ (the per-view statistics are sums over a `(m, B, ...)` tensor
instead of `m` tensors `(B, ...)`), so tolerances are a few float32 ulps of
the magnitude of what is summed (`tests/testing.py: float32_atol`).
"""

import math
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_pcl.fusion import ViewBatchedNetwork
from keras_pcl.fusion import fusable
from keras_pcl.mean_teacher import freeze_variable
from tests.testing import float32_atol
from tests.testing import gradients
from tests.testing import kd_magnitude

NUM_VIEWS = 3
BATCH = 4
IMAGE = 8


def conv(filters, size, name, use_bias=True):
    # Zeros, then `randomize`: random initializers would compile one XLA
    # program per weight shape on JAX, seconds per network.
    return keras.layers.Conv2D(
        filters,
        size,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="zeros",
        name=name,
    )


def batch_norm(name):
    return keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-3, name=name)


def randomize(network, seed):
    """Random weights from NumPy: the same on every backend.

    Batch norm gets parameters and moving statistics away from their
    defaults, so that a wrong gamma, beta, epsilon or update shows.
    """
    rng = np.random.default_rng(seed)
    values = []
    for v in network.weights:
        shape = tuple(v.shape)
        if v.name == "kernel":
            fan_in = np.prod(shape[:-1])
            value = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
        elif v.name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:  # beta, bias, moving_mean
            value = rng.normal(size=shape) * 0.3
        values.append(value.astype("float32"))
    network.set_weights(values)
    return network


def residual_trunk(seed=0):
    """conv-BN-ReLU, then a residual block (conv-BN-ReLU-conv-BN + Add)."""
    inputs = keras.Input((IMAGE, IMAGE, 3), name="images")
    x = conv(4, 3, "stem", use_bias=False)(inputs)
    x = keras.layers.ReLU(name="stem_relu")(batch_norm("stem_bn")(x))
    y = conv(4, 3, "conv1")(x)
    y = keras.layers.ReLU(name="relu1")(batch_norm("bn1")(y))
    y = conv(4, 3, "conv2")(y)
    y = batch_norm("bn2")(y)
    x = keras.layers.Add(name="add")([x, y])
    outputs = keras.layers.ReLU(name="out")(x)
    return randomize(keras.Model(inputs, outputs, name="residual_trunk"), seed)


def dense_block_trunk(seed=0):
    """A DenseNet-BC-like block: BN-ReLU-conv layers whose outputs concatenate."""
    inputs = keras.Input((IMAGE, IMAGE, 3), name="images")
    x = conv(4, 3, "stem", use_bias=False)(inputs)
    for i in range(2):
        y = keras.layers.ReLU(name=f"relu{i}")(batch_norm(f"bn{i}")(x))
        y = conv(2, 3, f"conv{i}")(y)
        x = keras.layers.Concatenate(name=f"concat{i}")([x, y])
    x = keras.layers.ReLU(name="relu_t")(batch_norm("bn_t")(x))
    x = conv(4, 1, "transition")(x)
    outputs = keras.layers.AveragePooling2D(2, name="pool")(x)
    return randomize(keras.Model(inputs, outputs, name="dense_trunk"), seed)


def normalization_trunk(seed=0):
    """LayerNormalization and GroupNormalization: per example, fused as is."""
    inputs = keras.Input((IMAGE, IMAGE, 3), name="images")
    x = conv(4, 3, "conv1")(inputs)
    x = keras.layers.GroupNormalization(groups=2, name="gn")(x)
    x = conv(4, 3, "conv2")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    outputs = batch_norm("bn")(x)
    return randomize(keras.Model(inputs, outputs, name="norm_trunk"), seed)


def channels_first_trunk(seed=0):
    """Batch norm over axis 1, and without `center` and `scale`."""
    inputs = keras.Input((3, IMAGE, IMAGE), name="images")
    x = keras.layers.BatchNormalization(axis=1, momentum=0.8, name="bn1")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.BatchNormalization(
        axis=1, center=False, scale=False, momentum=0.9, name="bn2"
    )(x)
    return randomize(keras.Model(inputs, x, name="channels_first"), seed)


TRUNKS = {
    "residual": residual_trunk,
    "dense_block": dense_block_trunk,
    "layer_and_group_norm": normalization_trunk,
    "channels_first_bn": channels_first_trunk,
}


def make_views(seed=0, shape=(IMAGE, IMAGE, 3)):
    rng = np.random.default_rng(seed)
    # Views with different statistics, as augmentations of one batch have.
    return [
        (rng.normal(size=(BATCH,) + shape) * (1 + i) + i).astype("float32")
        for i in range(NUM_VIEWS)
    ]


def numpy(tensors):
    return [np.asarray(ops.convert_to_numpy(t), dtype="float64") for t in tensors]


def moving_statistics(network):
    return {
        v.path: np.asarray(ops.convert_to_numpy(v), "float64")
        for v in network.weights
        if v.name in ("moving_mean", "moving_variance")
    }


def compiled(fn):
    """`fn` compiled on JAX (eager JAX compiles every op of a new shape)."""
    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def training_pass(network, fused):
    """`fn(weights, views) -> (outputs, moving statistics)`, stateless.

    The same training-mode pass as `network(v, training=True)` per view
    (`fused=False`), `ViewBatchedNetwork` (True) or one pass over the
    concatenated views (`"whole"`: batch statistics of all views, wrong),
    with the variables' values given and the updated moving statistics
    returned instead of assigned, so that JAX can compile it.
    """
    variables = network.weights
    substitute = ViewBatchedNetwork(network, NUM_VIEWS)

    def fn(weights, views):
        with keras.StatelessScope(state_mapping=list(zip(variables, weights))) as scope:
            if fused == "whole":
                whole = network(ops.concatenate(views, axis=0), training=True)
                outputs = ops.split(whole, NUM_VIEWS, axis=0)
            elif fused:
                outputs = substitute(views, training=True)
            else:
                outputs = [network(v, training=True) for v in views]
        stats = {
            v.path: scope.get_current_value(v)
            for v in variables
            if v.name in ("moving_mean", "moving_variance")
        }
        return outputs, stats

    return compiled(fn)


def weights_of(network):
    return [v.value for v in network.weights]


def run_both(network, views):
    """(separate outputs, their statistics, fused outputs, their statistics)."""
    weights = weights_of(network)
    results = []
    for fused in (False, True):
        outputs, stats = training_pass(network, fused)(weights, views)
        results += [numpy(outputs), {k: numpy([v])[0] for k, v in stats.items()}]
    return tuple(results)


def statistics_atol(stats):
    # A moving statistic is a sum of `m + 1` terms (the old value and each
    # view's statistic, scaled by momentum powers); each view's statistic
    # is a mean over B * H * W = 256 values computed in another order.
    # Reduction-order error: a few ulps of the largest statistic, times
    # log2 of the terms summed (pairwise/blocked sums), 8 ulps of margin.
    magnitude = max(np.max(np.abs(s)) for s in stats.values())
    return float32_atol(magnitude * math.log2(BATCH * IMAGE * IMAGE), k=8)


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_fused_outputs_and_moving_statistics_equal_separate_passes(name):
    network = TRUNKS[name](seed=1)
    assert fusable(network) == (True, None)
    views = make_views(shape=tuple(network.input.shape[1:]))
    separate, separate_stats, fused, fused_stats = run_both(network, views)

    # A batch-normalised output x_hat = (x - mean) / std: its rounding error
    # is that of the statistics relative to std, i.e. a few ulps of
    # |x_hat| for each statistic summed in another order, carried through
    # at most two more layers. 16 ulps of the largest output.
    magnitude = max(np.max(np.abs(s)) for s in separate)
    for s, f in zip(separate, fused):
        assert s.shape == f.shape == (BATCH,) + s.shape[1:]
        np.testing.assert_allclose(f, s, rtol=0, atol=float32_atol(magnitude, k=16))

    # What the tolerance tells apart: one pass over the concatenated views,
    # with statistics of the whole batch, is far off.
    whole = numpy(training_pass(network, "whole")(weights_of(network), views)[0])
    assert max(np.max(np.abs(w - s)) for w, s in zip(whole, separate)) > 1e3 * (
        float32_atol(magnitude, k=16)
    )

    assert separate_stats.keys() == fused_stats.keys() and separate_stats
    atol = statistics_atol(separate_stats)
    initial = moving_statistics(network)
    for path, value in separate_stats.items():
        np.testing.assert_allclose(fused_stats[path], value, rtol=0, atol=atol)
        # The statistics moved (m updates of momentum 0.8 each).
        assert np.max(np.abs(value - initial[path])) > 1000 * atol


def test_moving_statistics_follow_the_closed_form_of_m_updates():
    """`s <- momentum**m s + (1 - momentum) sum_i momentum**(m - i) s_i`."""
    inputs = keras.Input((IMAGE, IMAGE, 3))
    bn = batch_norm("bn")
    network = randomize(keras.Model(inputs, bn(inputs)), seed=2)
    views = make_views(seed=3)
    mean0, var0 = numpy([bn.moving_mean, bn.moving_variance])
    ViewBatchedNetwork(network, NUM_VIEWS)(views)
    momentum, m = bn.momentum, NUM_VIEWS
    # Keras' convention: the biased (population) variance of the batch.
    means = [v.astype("float64").mean(axis=(0, 1, 2)) for v in views]
    variances = [v.astype("float64").var(axis=(0, 1, 2)) for v in views]
    expected_mean = momentum**m * mean0 + (1 - momentum) * sum(
        momentum ** (m - 1 - i) * means[i] for i in range(m)
    )
    expected_var = momentum**m * var0 + (1 - momentum) * sum(
        momentum ** (m - 1 - i) * variances[i] for i in range(m)
    )
    stats = {"v": np.abs(np.concatenate([expected_mean, expected_var]))}
    mean, var = numpy([bn.moving_mean, bn.moving_variance])
    np.testing.assert_allclose(mean, expected_mean, rtol=0, atol=statistics_atol(stats))
    np.testing.assert_allclose(var, expected_var, rtol=0, atol=statistics_atol(stats))


def compiled_gradients(fn, tensors):
    """`tests.testing.gradients`, compiled in one program on JAX."""
    if keras.backend.backend() != "jax":
        return gradients(fn, tensors)
    import jax

    grad = jax.jit(jax.grad(fn, argnums=tuple(range(len(tensors)))))
    return [np.asarray(g) for g in grad(*[np.asarray(t, "float32") for t in tensors])]


def loss_of(network, fused, cotangents):
    """`fn(*trainable weights, x)`: the outputs weighted by `cotangents`.

    A plain sum would be blind to most of the gradient (the sum of a
    batch-normalised tensor is constant); random weights are not.
    """
    variables = network.trainable_variables
    substitute = ViewBatchedNetwork(network, NUM_VIEWS)

    def fn(*tensors):
        *weights, x = tensors
        views = ops.split(x, NUM_VIEWS, axis=0)
        with keras.StatelessScope(state_mapping=list(zip(variables, weights))):
            if fused:
                outputs = substitute(views, training=True)
            else:
                outputs = [network(v, training=True) for v in views]
        return sum(
            ops.sum(o * ops.convert_to_tensor(c)) for o, c in zip(outputs, cotangents)
        )

    return fn


@pytest.mark.parametrize("name", ["residual", "dense_block"])
def test_fused_gradients_equal_separate_passes(name):
    network = TRUNKS[name](seed=3)
    views = make_views(seed=4)
    output_shape = (BATCH,) + tuple(network.output.shape[1:])
    rng = np.random.default_rng(5)
    cotangents = [
        rng.normal(size=output_shape).astype("float32") for _ in range(NUM_VIEWS)
    ]
    tensors = numpy(network.trainable_variables) + [np.concatenate(views)]
    separate = compiled_gradients(loss_of(network, False, cotangents), tensors)
    fused = compiled_gradients(loss_of(network, True, cotangents), tensors)

    names = [v.path for v in network.trainable_variables] + ["inputs"]
    assert len(separate) == len(names)
    # Every gradient entry sums products over the batch and positions
    # (B * H * W = 256 per view, of both signs) of cotangents pushed back
    # through the same layers, and each batch norm adds sums over the batch
    # to the backward pass. The float32 error is relative to the size of
    # those products, not to the result: a bias before a batch norm has a
    # gradient that is exactly 0 in exact arithmetic and pure rounding in
    # float32 (1e-5 here). The largest gradient entry in the network stands
    # for the size of the products, log2 of their number for their growth;
    # 8 ulps of margin (the differences seen are 0.5-2 such ulps).
    largest = max(np.max(np.abs(s)) for s in separate)
    atol = float32_atol(largest * math.log2(BATCH * IMAGE * IMAGE), k=8)
    for label, s, f in zip(names, separate, fused):
        np.testing.assert_allclose(f, s, rtol=0, atol=atol, err_msg=label)
    # What the tolerance tells apart: kernels' gradients are 1e5 times it.
    kernels = [s for label, s in zip(names, separate) if "kernel" in label]
    assert min(np.max(np.abs(s)) for s in kernels) > 1e4 * atol


def test_the_mean_teacher_trunk_fuses_with_frozen_variables():
    """Variables frozen, layers trainable: batch norm in training mode."""
    network = residual_trunk(seed=4)
    for variable in network.weights:
        freeze_variable(variable)
    assert not network.trainable_weights and network.trainable
    separate, separate_stats, fused, fused_stats = run_both(network, make_views(5))
    magnitude = max(np.max(np.abs(s)) for s in separate)
    for s, f in zip(separate, fused):
        np.testing.assert_allclose(f, s, rtol=0, atol=float32_atol(magnitude, k=16))
    atol = statistics_atol(separate_stats)
    initial = moving_statistics(network)
    for path, value in separate_stats.items():
        np.testing.assert_allclose(fused_stats[path], value, rtol=0, atol=atol)
        assert np.max(np.abs(value - initial[path])) > 1000 * atol


def test_a_frozen_batch_norm_layer_runs_in_inference_mode():
    network = residual_trunk(seed=5)
    network.get_layer("bn1").trainable = False
    separate, separate_stats, fused, fused_stats = run_both(network, make_views(6))
    magnitude = max(np.max(np.abs(s)) for s in separate)
    for s, f in zip(separate, fused):
        np.testing.assert_allclose(f, s, rtol=0, atol=float32_atol(magnitude, k=16))
    initial = moving_statistics(network)
    bn1 = [p for p in initial if p.split("/")[-2] == "bn1"]
    assert bn1 and all(np.array_equal(fused_stats[p], initial[p]) for p in bn1)


def test_mixed_precision_keeps_batch_norm_statistics_in_float32():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        network = residual_trunk(seed=9)
        separate, separate_stats, fused, fused_stats = run_both(network, make_views(9))
        (output, *_) = ViewBatchedNetwork(network, NUM_VIEWS)(make_views(9))
    finally:
        keras.config.set_dtype_policy(policy)
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    assert {str(v.dtype) for v in network.weights if "moving" in v.name} == {"float32"}
    # float16 outputs: statistics in float32 as in Keras, so the fused
    # outputs round to the same float16 values but where a float32
    # difference of a few ulps crosses a float16 rounding boundary (one
    # float16 ulp, 2**-10 relative).
    magnitude = max(np.max(np.abs(s)) for s in separate)
    for s, f in zip(separate, fused):
        np.testing.assert_allclose(f, s, rtol=0, atol=2.0**-10 * magnitude)
    atol = statistics_atol(separate_stats)
    for path, value in separate_stats.items():
        np.testing.assert_allclose(fused_stats[path], value, rtol=0, atol=atol)


# ----------------------------------------------------------------------
# What is refused
# ----------------------------------------------------------------------


class BatchCentering(keras.layers.Layer):
    """Subtracts the batch mean: mixes the examples of a batch."""

    def call(self, x):
        return x - ops.mean(x, axis=0, keepdims=True)


def with_layer(layer):
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = conv(4, 3, "conv")(inputs)
    x = layer(x)
    return keras.Model(inputs, x, name="net")


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.Dropout(0.2, name="drop"), r"'drop' \(Dropout\).*random"),
        (keras.layers.GaussianNoise(0.1, name="noise"), r"'noise' \(GaussianNoise\)"),
        (BatchCentering(name="centering"), r"'centering' \(BatchCentering\).*mix"),
        (keras.layers.Concatenate(axis=0, name="cat"), r"'cat' \(Concatenate\).*batch"),
        (
            keras.layers.BatchNormalization(renorm=True, name="renorm_bn"),
            r"'renorm_bn' \(BatchNormalization\).*renorm",
        ),
    ],
    ids=["dropout", "noise", "custom", "batch_concat", "renorm"],
)
def test_layers_that_mix_examples_or_draw_randomness_are_refused(layer, message):
    if isinstance(layer, keras.layers.Concatenate):
        inputs = keras.Input((IMAGE, IMAGE, 3))
        x = conv(4, 3, "conv")(inputs)
        network = keras.Model(inputs, layer([x, x]), name="net")
    else:
        network = with_layer(layer)
    ok, reason = fusable(network)
    assert not ok
    assert re.search(message, reason), reason
    with pytest.raises(ValueError, match="Received: network='net'"):
        ViewBatchedNetwork(network, NUM_VIEWS)


def test_a_custom_layer_can_be_declared_per_example():
    class Double(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    network = with_layer(Double(name="double"))
    assert not fusable(network)[0]
    assert fusable(network, per_example_layers=(Double,)) == (True, None)


def test_nested_models_are_checked_inside():
    inner = with_layer(keras.layers.Dropout(0.5, name="drop"))
    inputs = keras.Input((IMAGE, IMAGE, 3))
    outer = keras.Model(inputs, inner(inputs), name="outer")
    ok, reason = fusable(outer)
    assert not ok and "nested in 'outer'" in reason and "'drop'" in reason

    trunk = residual_trunk(seed=6)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    # Recorded `training=False`: the caller's flag overrides it, as in Keras.
    features = trunk(inputs, training=False)
    outer = keras.Model(inputs, keras.layers.ReLU()(features), name="outer")
    assert fusable(outer) == (True, None)
    separate, separate_stats, fused, fused_stats = run_both(outer, make_views(7))
    magnitude = max(np.max(np.abs(s)) for s in separate)
    for s, f in zip(separate, fused):
        np.testing.assert_allclose(f, s, rtol=0, atol=float32_atol(magnitude, k=16))
    atol = statistics_atol(separate_stats)
    for path, value in separate_stats.items():
        np.testing.assert_allclose(fused_stats[path], value, rtol=0, atol=atol)


def test_a_subclassed_model_and_arguments_are_refused():
    class Sub(keras.Model):
        def call(self, x):
            return x

    ok, reason = fusable(Sub(name="sub"))
    assert not ok and "'sub'" in reason and "subclassed" in reason
    network = residual_trunk()
    with pytest.raises(ValueError, match="Received: num_views=0"):
        ViewBatchedNetwork(network, 0)
    with pytest.raises(ValueError, match="Received: 2 views"):
        ViewBatchedNetwork(network, NUM_VIEWS)(make_views()[:2])


# ----------------------------------------------------------------------
# In a model: no new variables, the same ones, compiled training
# ----------------------------------------------------------------------


class Holder(keras.Model):
    """A model that holds a trunk and runs it per view, fused or not."""

    def __init__(self, network, fused, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.fused = ViewBatchedNetwork(network, NUM_VIEWS) if fused else None

    def call(self, x, training=False):
        views = ops.split(x, NUM_VIEWS, axis=0)
        if self.fused is not None and training:
            outputs = self.fused(views, training=True)
        else:
            outputs = [self.network(v, training=training) for v in views]
        return ops.concatenate(outputs, axis=0)


def test_the_substitute_adds_no_variables_and_uses_the_networks_own():
    network = residual_trunk(seed=7)
    plain = Holder(network, fused=False)
    holder = Holder(network, fused=True)
    x = np.concatenate(make_views(8))
    plain(x), holder(x)  # Builds.
    assert [id(v) for v in holder.weights] == [id(v) for v in network.weights]
    assert len(holder.weights) == len(plain.weights) == len(network.weights)
    if keras.backend.backend() == "torch":
        assert {id(p) for p in holder.parameters()} == {
            id(v.value) for v in network.weights
        }

    # Stateless training (what JAX's trainer does): the state maps the
    # network's variables by identity, and the updated statistics come back.
    trainable = [v.value for v in holder.trainable_variables]
    non_trainable = [v.value for v in holder.non_trainable_variables]
    expected, expected_state = plain.stateless_call(
        trainable, non_trainable, x, training=True
    )
    output, state = holder.stateless_call(trainable, non_trainable, x, training=True)
    magnitude = np.max(np.abs(ops.convert_to_numpy(expected)))
    np.testing.assert_allclose(
        ops.convert_to_numpy(output),
        ops.convert_to_numpy(expected),
        rtol=0,
        atol=float32_atol(magnitude, k=16),
    )
    stats = {
        str(i): np.asarray(ops.convert_to_numpy(s), "float64")
        for i, s in enumerate(expected_state)
    }
    for e, s in zip(expected_state, state):
        np.testing.assert_allclose(
            ops.convert_to_numpy(s),
            ops.convert_to_numpy(e),
            rtol=0,
            atol=statistics_atol(stats),
        )
        assert not np.allclose(ops.convert_to_numpy(s), ops.convert_to_numpy(e) * 0)


def test_compiled_training_steps_equal_separate_passes():
    """`fit` with `steps_per_execution` (and XLA where it is the default).

    Also checks that the trainer's own variable bookkeeping (JAX's stateless
    step, TensorFlow's traced function, torch's Parameters) sees the
    statistics the substitute updates: they must match the separate run's.
    """
    x = np.concatenate(make_views(9))
    rng = np.random.default_rng(10)
    y = rng.normal(size=(NUM_VIEWS * BATCH, IMAGE, IMAGE, 4)).astype("float32")
    results = []
    for fused in (False, True):
        model = Holder(residual_trunk(seed=8), fused=fused)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss="mse",
            # Several steps in one compiled function (not on torch).
            steps_per_execution=1 if keras.backend.backend() == "torch" else 2,
        )
        initial = [ops.convert_to_numpy(w) for w in model.weights]
        # One batch of all views per step, unshuffled: 2 steps per execution.
        model.fit(
            np.concatenate([x, x]),
            np.concatenate([y, y]),
            batch_size=len(x),
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        results.append([ops.convert_to_numpy(w) for w in model.weights])
    trained = [
        (w0, s) for w0, s, v in zip(initial, results[0], model.weights) if v.trainable
    ]
    # The largest update of any weight: the size of the updates' rounding
    # errors everywhere (a bias before a batch norm has a gradient that is
    # only rounding, see test_fused_gradients_equal_separate_passes).
    largest_step = max(np.max(np.abs(s - w0)) for w0, s in trained)
    for w0, s, f, v in zip(initial, *results, model.weights):
        if v.name in ("moving_mean", "moving_variance"):
            atol = statistics_atol({"s": s})
            assert np.max(np.abs(s - w0)) > 1000 * atol, v.path
            np.testing.assert_allclose(f, s, rtol=0, atol=atol, err_msg=v.path)
            continue
        # Two SGD steps: the weights' own rounding plus that of the updates
        # (sums over the batch and positions), with log2 of their number.
        scale = np.max(np.abs(s)) + math.log2(BATCH * IMAGE * IMAGE) * largest_step
        np.testing.assert_allclose(
            f, s, rtol=0, atol=float32_atol(scale, k=16), err_msg=v.path
        )
    # What the tolerance tells apart: the weights moved far more than it.
    largest = max(np.max(np.abs(s)) for _, s in trained)
    scale = largest + math.log2(BATCH * IMAGE * IMAGE) * largest_step
    assert largest_step > 100 * float32_atol(scale, k=16)


# ----------------------------------------------------------------------
# Inside `PeerCollaborativeModel` (the `fuse_views` switch)
# ----------------------------------------------------------------------


def pcl_run(backbone_fn, fuse_views, steps=3, lr=0.01, **kwargs):
    """`steps` PCL steps from one seed: (history, weights, model, initial).

    lr 0.01: at 0.1 these tiny runs are chaotic. On JAX, ResNet-8's fused
    and separate weights agree to 0.05 of `sgd_weights_atol` after one step
    but 370x it after three, with the mean losses equal to 2e-7; at 0.01,
    0.06 after three (measured).
    """
    import keras_pcl
    from tests.testing import colour_dataset

    keras.utils.set_random_seed(11)
    model = keras_pcl.PeerCollaborativeModel(
        backbone_fn(), 3, rampup_steps=2, fuse_views=fuse_views, **kwargs
    )
    size = model._image_shape[0]
    x, y = colour_dataset(8 * steps, image_size=size, seed=0)
    initial = [numpy([w])[0] for w in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, nesterov=True))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return history.history, [numpy([w])[0] for w in model.weights], model, initial


def small_resnet():
    import keras_pcl

    return keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(8, 8, 3))


def small_densenet():
    import keras_pcl

    return keras_pcl.backbones.CIFARDenseNet(
        depth=10, growth_rate=4, input_shape=(8, 8, 3)
    )


def layer_norm_backbone():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.ReLU(name="split")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    x = keras.layers.GroupNormalization(groups=2, name="gn")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="normalized")


def small_mobilenet():
    return keras.applications.MobileNetV2(
        weights=None,
        include_top=False,
        pooling="avg",
        input_shape=(32, 32, 3),
        alpha=0.35,
    )


@pytest.mark.parametrize(
    "backbone_fn, kwargs",
    [
        (small_resnet, {}),
        (small_densenet, {}),
        (layer_norm_backbone, {"split_at": "split"}),
        (small_resnet, {"distill_from_ensemble": False}),
        (small_resnet, {"views_per_peer": False}),
    ],
    ids=["resnet8", "densenet", "layer_norm", "no_ensemble", "shared"],
)
def test_fused_training_equals_separate_passes(backbone_fn, kwargs):
    from tests.testing import sgd_weights_atol

    fused_logs, fused, model, start = pcl_run(backbone_fn, True, **kwargs)
    assert id(model.trunk) in model._fused
    assert id(model.mean_teacher_trunk) in model._fused
    plain_logs, plain, plain_model, plain_start = pcl_run(backbone_fn, False, **kwargs)
    assert not plain_model._fused
    for a, b in zip(start, plain_start):
        np.testing.assert_array_equal(a, b)  # The same seed, the same start.
    # The logged terms are sums of float32 quantities as large as the
    # cross-entropies plus the 2m KD terms' log-probabilities (kd_magnitude,
    # see tests/testing.py), whatever their own size; the same sums grouped
    # otherwise differ by a few ulps of that (16 of margin). A fusion error
    # (statistics over all views at once) moves every logit by O(1).
    magnitude = abs(plain_logs["ce"][0]) + kd_magnitude(3.0, 3, 2 * 3)
    atol = float32_atol(magnitude, k=16)
    for key in ("loss", "ce", "pe", "pm"):
        np.testing.assert_allclose(
            fused_logs[key], plain_logs[key], rtol=0, atol=atol, err_msg=key
        )
    for variable, a, b, w0 in zip(model.weights, fused, plain, start):
        # Three steps of the same SGD updates summed in another order
        # (batch 8 x the trunk's input positions per gradient entry).
        size = model._image_shape[0]
        atol = sgd_weights_atol(b, w0, summed_terms=8 * size * size)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=variable.path)


@pytest.mark.backend_independent(on="tensorflow")
def test_a_keras_applications_trunk_fuses_exactly():
    """MobileNetV2's PCL trunk: fused == separate, outputs and gradients.

    One trunk pass, not training runs: MobileNetV2 at 32x32 on toy data is
    chaotic (after one PCL step at lr 0.1, the *separate* passes compiled by
    XLA and by TensorFlow's graph differ by 45 in a kernel of scale 32;
    fused vs separate by 0.2; measured). On TensorFlow only in CI: JAX
    builds it for minutes, and Keras' torch `moments` computes variances as
    E[x^2] - E[x]^2, whose cancellation in the deep 2x2 layers leaves 1-8%
    between two groupings of the same sums (TensorFlow and JAX agree to
    1e-5).
    """
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' torch moments: E[x^2] - E[x]^2 (see the docstring)")
    from keras_pcl.splitting import recommended_split
    from keras_pcl.splitting import split_backbone
    from tests.testing import colour_dataset

    keras.utils.set_random_seed(0)
    backbone = small_mobilenet()
    trunk, _ = split_backbone(backbone, recommended_split(backbone))
    assert fusable(trunk) == (True, None)
    batch = 8  # At 4, the 2x2 maps of block 12 normalise over 16 values.
    x, _ = colour_dataset(3 * batch, image_size=32, seed=0)
    views = list(np.split(x.astype("float32") / 255, 3))
    separate, separate_stats, fused, fused_stats = run_both(trunk, views)
    # Each batch norm divides by statistics that carry the rounding of its
    # sums (relative to the output's size), and the error adds up along the
    # chain: 8 ulps of the output per batch-norm layer it passes.
    depth = sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in trunk.layers
    )
    for s, f in zip(separate, fused):
        atol = float32_atol(np.abs(s).max(), k=8 * depth)
        np.testing.assert_allclose(f, s, rtol=0, atol=atol)
    # Statistics: as in `statistics_atol`, over 8 * 32 * 32 values here,
    # and through the same chain of normalisations as the outputs.
    magnitude = max(np.max(np.abs(v)) for v in separate_stats.values())
    atol = float32_atol(magnitude * math.log2(batch * 32 * 32), k=8 * depth)
    for key in separate_stats:
        np.testing.assert_allclose(
            fused_stats[key], separate_stats[key], rtol=0, atol=atol, err_msg=key
        )
    rng = np.random.default_rng(5)
    shape = (batch,) + tuple(trunk.output.shape[1:])
    cotangents = [rng.normal(size=shape).astype("float32") for _ in range(3)]
    tensors = numpy(trunk.trainable_variables) + [np.concatenate(views)]
    s_grads = compiled_gradients(loss_of(trunk, False, cotangents), tensors)
    f_grads = compiled_gradients(loss_of(trunk, True, cotangents), tensors)
    # As in `test_fused_gradients_equal_separate_passes`: relative to the
    # largest gradient entry, log2 of the terms per entry, 16 ulps of margin.
    largest = max(np.max(np.abs(g)) for g in s_grads)
    atol = float32_atol(largest * math.log2(batch * 32 * 32), k=16)
    for variable, s, f in zip(trunk.trainable_variables, s_grads, f_grads):
        np.testing.assert_allclose(f, s, rtol=0, atol=atol, err_msg=variable.path)


def test_a_backbone_that_mixes_the_batch_falls_back_with_a_message(monkeypatch):
    import keras_pcl
    from keras_pcl import speedups

    # `fuse_views="auto"` tries to fuse on accelerators only: pretend one.
    monkeypatch.setattr(speedups, "device_kind", lambda: "gpu")

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.ReLU(name="split")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    backbone = keras.Model(inputs, outputs, name="with_dropout")
    with pytest.warns(UserWarning, match="once per peer view.*'drop' \\(Dropout\\)"):
        model = keras_pcl.PeerCollaborativeModel(backbone, 3, split_at="split")
    assert not model._fused
    with pytest.raises(ValueError, match="fuse_views=True"):
        keras_pcl.PeerCollaborativeModel(
            keras.models.clone_model(backbone), 3, split_at="split", fuse_views=True
        )
    with pytest.raises(ValueError, match="fuse_views='yes'"):
        keras_pcl.PeerCollaborativeModel(small_resnet(), 3, fuse_views="yes")


def test_auto_fuses_on_accelerators_only():
    from keras_pcl import speedups

    _, _, model, _ = pcl_run(small_resnet, "auto", steps=1)
    assert bool(model._fused) == (speedups.device_kind() in ("gpu", "tpu"))


def test_a_fused_model_saves_and_deploys_plain_keras_layers(tmp_path):
    import keras_pcl

    _, _, model, _ = pcl_run(small_resnet, True, steps=1)
    assert model.get_config()["fuse_views"] is True
    path = str(tmp_path / "fused.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert id(reloaded.trunk) in reloaded._fused
    network = model.get_peer(0)
    modules = {
        type(layer).__module__.split(".")[0] for layer in network._flatten_layers()
    }
    assert modules == {"keras"}  # No keras-pcl layer in the deployed network.
    exported = model.export_peer(str(tmp_path / "peer.keras"), peer=0, format="keras")
    assert isinstance(exported, keras.Model)
    x = np.zeros((2, 8, 8, 3), "uint8")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    assert keras_pcl.PeerCollaborativeModel is type(reloaded)
