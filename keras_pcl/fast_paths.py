"""Backend fast paths for the training step: same numbers, fewer kernels.

Keras' PyTorch backend runs two kinds of layer, which make up most of a
CIFAR network, with more memory traffic than PyTorch itself needs (Keras
3.15, `keras/src/backend/torch/nn.py`):

* `Conv2D` with `data_format="channels_last"` copies its input to NCHW
  (`permute(...).contiguous()`) and then back to channels-last memory
  (`_maybe_convert_to_channels_last`) before every convolution, forward and
  backward. A `(N, H, W, C)` tensor already *is* an NCHW tensor in
  channels-last memory, so `conv2d` below hands PyTorch that view: no copy.
* `BatchNormalization` in training is composed of separate moment and
  element-wise ops (the variance as `E[x^2] - E[x]^2`), each a pass over the
  activations, with as many again in autograd. `batch_norm` below calls
  PyTorch's fused kernel (`torch.nn.functional.batch_norm`, one pass each
  way) and updates the moving statistics as Keras does: `s <- momentum * s
  + (1 - momentum) * batch_statistic`, with the biased variance (PyTorch's
  own running statistics would use the unbiased one) and Keras' `epsilon`.
* `ReLU` and `Add` layers (`elementwise`) compute one backend op each, but
  every call goes through `Layer.__call__` (input conversion, autocast and
  name scopes, output metadata): Python work per layer, per view, per step
  (about a quarter of the layer calls of a CIFAR ResNet). `elementwise`
  calls the op the layer's `call` would (`ops.relu`, `ops.add` in the same
  order), so the result is bitwise the same.
* The mean-teacher update (`ema_update`) is three multi-tensor (`foreach`)
  ops over all variables instead of five ops per variable. It rounds
  exactly like `keras_pcl.mean_teacher.update_mean_teacher`'s generic form.

On TensorFlow, `BatchNormalization` in training is `tf.nn.moments` plus
`tf.nn.batch_normalization` (`keras/src/backend/tensorflow/nn.py`), about
ten ops over the activations forward and more in the gradient, which
Grappler leaves unfused; `batch_norm` runs TensorFlow's fused kernel
(`FusedBatchNormV3`, one op each way) with Keras' update of the moving
statistics. It is the only TensorFlow fast path: the other layers run in a
traced graph, where `Layer.__call__` costs nothing per step.

Under a `mixed_float16`/`mixed_bfloat16` policy the same paths take the
half-precision activations: the convolution casts its float32 variables to
the compute dtype as `Layer.__call__`'s autocast scope does, and the batch
norms compute in float32 and round once, as Keras' casts to float32 and
back do (on a CPU with bfloat16 instructions, what lets `mixed_bfloat16`
train faster than float32: `benchmarks/README.md`).

Each function computes what the Keras layer computes, up to float32
reduction order (PyTorch's batch-norm kernel accumulates the variance in
another order than `E[x^2] - E[x]^2`); `tests/fast_paths_test.py` checks
values, gradients and moving statistics against the layers, and a whole
PCL training run against one with the fast paths off. A layer the fast
path does not cover exactly (another class, a
quantised or LoRA layer, an activity regulariser, channels-first data)
runs through its own `__call__`, so nothing changes for it.

They are used by `keras_pcl.fusion.ViewBatchedNetwork` (`fast=True`), which
`MultiBranchModel` puts in place of every functional network it runs in
training where `keras_pcl.speedups` turns them on: under the default
`fast_paths="auto"`, on the backends and device kinds where a committed
figure shows them faster (today: torch and TensorFlow on a CPU; never
measured on a GPU, so off there). Written by hand because Keras has no hook
to swap a backend kernel for a layer; they use only public PyTorch and
TensorFlow functions (`tf.raw_ops.FusedBatchNormV3`).
"""

import keras
from keras import ops

from keras_pcl import _compat


def compiling():
    """Whether `torch.compile` is tracing (the fast paths then step aside)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def _plain_float32(layer, x):
    """Whether `layer` runs in float32 on a float32 input, with no extras."""
    return (
        keras.backend.standardize_dtype(x.dtype) == "float32"
        and layer.compute_dtype == "float32"
        and _plain_layer(layer)
    )


def _plain_mixed_precision(layer, x):
    """Whether `layer` computes in float16 or bfloat16 on such an input,
    with float32 variables (a `mixed_float16`/`mixed_bfloat16` policy),
    and no extras."""
    return (
        layer.compute_dtype in ("float16", "bfloat16")
        and keras.backend.standardize_dtype(x.dtype) == layer.compute_dtype
        and _plain_layer(layer)
    )


def _plain_layer(layer):
    """Float32 variables, not quantised, no LoRA, no activity regulariser."""
    return (
        layer.variable_dtype == "float32"
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
        and layer.activity_regularizer is None
        and not _compat.in_stateless_scope()
    )


_ELEMENTWISE_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.Add)


def _plain_relu(layer):
    if type(layer) is keras.layers.ReLU:
        return (
            layer.negative_slope == 0
            and layer.max_value is None
            and layer.threshold == 0
        )
    return (
        type(layer) is keras.layers.Activation
        and layer.activation is keras.activations.relu
    )


def _covers_elementwise(layer, x):
    if type(layer) is keras.layers.Add:
        return (
            isinstance(x, (list, tuple))
            and len(x) >= 2
            and all(
                hasattr(t, "shape") and tuple(t.shape) == tuple(x[0].shape) for t in x
            )
            and all(_plain(layer, t) for t in x)
        )
    return _plain_relu(layer) and hasattr(x, "dtype") and _plain(layer, x)


def _plain(layer, x):
    """float32 throughout, or a mixed policy on its compute dtype's input."""
    return _plain_float32(layer, x) or _plain_mixed_precision(layer, x)


def covers(layer, x, training):
    """Whether a fast path here computes `layer(x, training)` exactly.

    Never while `torch.compile` traces the step (`jit_compile=True`): it
    fuses Keras' own ops itself, and its symbolic shapes would meet the
    Python conditions here. On TensorFlow only batch normalisation has one
    (`batch_norm`): the other layers run in a traced graph, where skipping
    `Layer.__call__` saves nothing per step.
    """
    kind = type(layer)
    if keras.backend.backend() == "tensorflow":
        return kind is keras.layers.BatchNormalization and _covers_tf_batch_norm(
            layer, x, training
        )
    if kind in _ELEMENTWISE_LAYERS:
        return not compiling() and _covers_elementwise(layer, x)
    if kind not in (keras.layers.Conv2D, keras.layers.BatchNormalization):
        return False
    if compiling() or len(x.shape) != 4 or not _plain(layer, x):
        return False
    if kind is keras.layers.Conv2D:
        return layer.data_format == "channels_last"
    if type(layer) is keras.layers.BatchNormalization:
        return (
            training
            and layer.trainable
            and layer.axis in (-1, 1, 3)
            and x.numel() > x.shape[layer.axis]  # Over one value per channel.
            and not layer.renorm
            and not layer.synchronized
        )
    return False


# cuDNN's smallest batch-norm epsilon (`CUDNN_BN_MIN_EPSILON`, 1e-5): below
# it TensorFlow's GPU kernel would not use the layer's own epsilon.
_TF_MIN_EPSILON = 1.001e-5


def _covers_tf_batch_norm(layer, x, training):
    return (
        bool(training)
        and layer.trainable
        and len(x.shape) == 4
        and layer.axis in (-1, 3)  # FusedBatchNormV3's NHWC layout.
        and x.shape[-1] is not None
        and layer.epsilon >= _TF_MIN_EPSILON
        and not layer.renorm
        and not layer.synchronized
        and _plain(layer, x)
    )


def call(layer, x):
    """`conv2d`, `batch_norm` or `elementwise`, as `layer` is (`covers` holds)."""
    if type(layer) is keras.layers.Conv2D:
        return conv2d(layer, x)
    if type(layer) in _ELEMENTWISE_LAYERS:
        return elementwise(layer, x)
    return batch_norm(layer, x)


def elementwise(layer, x):
    """`layer(x)` for a plain `ReLU` or an `Add` layer, without `__call__`.

    Args:
        layer: `keras.layers.ReLU()` with its defaults,
            `keras.layers.Activation("relu")` or `keras.layers.Add()`, for
            which `covers` holds.
        x: a torch tensor (ReLU) or a list of tensors of
            one shape (Add).

    Returns:
        What the layer's `call` returns: `ops.relu(x)`, or the inputs
        summed left to right with `ops.add` (Keras'
        `Add._merge_function`), bitwise.

    Example:

    >>> import keras, numpy as np
    >>> x = ops.convert_to_tensor(np.array([[-1.0, 2.0]], "float32"))
    >>> ops.convert_to_numpy(elementwise(keras.layers.ReLU(), x)).tolist()
    [[0.0, 2.0]]
    >>> ops.convert_to_numpy(elementwise(keras.layers.Add(), [x, x])).tolist()
    [[-2.0, 4.0]]
    """
    if type(layer) is keras.layers.Add:
        output = x[0]
        for other in x[1:]:
            output = ops.add(output, other)
        return output
    return ops.relu(x)


def conv2d(layer, x):
    """`layer(x)` for a channels-last `keras.layers.Conv2D`, without copies.

    Args:
        layer: a built `keras.layers.Conv2D` for which `covers` holds.
        x: a `(N, H, W, C)` torch tensor, float32 or the layer's compute
            dtype under a mixed policy.

    Returns:
        The layer's output, `(N, H', W', filters)`, contiguous.

    Example:

    >>> import keras, numpy as np
    >>> layer = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    >>> x = ops.convert_to_tensor(np.ones((2, 8, 8, 3), "float32"))
    >>> tuple(conv2d(layer, x).shape) == tuple(layer(x).shape)
    True
    """
    # The (N, C, H, W) view of a contiguous NHWC tensor has channels-last
    # strides; Keras' own channels-first convolution (same padding rules)
    # then runs PyTorch's channels-last kernel on it as is.
    # Under a mixed policy `Layer.__call__` reads the float32 variables cast
    # to the compute dtype (its autocast scope); so do these casts.
    dtype = layer.compute_dtype
    outputs = ops.conv(
        x.permute(0, 3, 1, 2),
        ops.cast(layer.kernel, dtype),
        strides=list(layer.strides),
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format="channels_first",
    ).permute(0, 2, 3, 1)
    if layer.use_bias:
        outputs = outputs + ops.cast(layer.bias, dtype)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def batch_norm(layer, x):
    """`layer(x, training=True)` for a 4-D `BatchNormalization`.

    Normalises with the backend's fused kernel (PyTorch's `batch_norm`,
    TensorFlow's `FusedBatchNormV3`) and the batch's mean and biased
    variance, then updates the layer's moving statistics as Keras does.

    Args:
        layer: a built, trainable `keras.layers.BatchNormalization` on the
            channel axis (last, or 1 for channels-first data), for which
            `covers` holds.
        x: a `(N, H, W, C)` (or `(N, C, H, W)`) tensor, float32 or the
            layer's compute dtype under a mixed policy.

    Returns:
        The normalised `x`, same shape, contiguous.

    Example:

    >>> import keras, numpy as np
    >>> layer = keras.layers.BatchNormalization()
    >>> x = ops.convert_to_tensor(np.ones((2, 4, 4, 3), "float32"))
    >>> tuple(batch_norm(layer, x).shape)
    (2, 4, 4, 3)
    """
    if keras.backend.backend() == "tensorflow":
        return _tf_batch_norm(layer, x)
    import torch

    gamma = layer.gamma.value if layer.scale else None
    beta = layer.beta.value if layer.center else None
    channels_last = layer.axis != 1
    channels = x.shape[-1] if channels_last else x.shape[1]
    count = x.numel() // channels
    # With momentum 1, PyTorch's running statistics are the batch's mean and
    # its unbiased variance, from the same pass as the normalisation (a
    # separate `torch.var_mean` over N, H and W measured 4x the kernel).
    # float32 statistics also for a float16/bfloat16 `x` (a mixed policy):
    # the kernel then computes in float32 and rounds its output once, as
    # Keras' casts to float32 and back do.
    batch_mean = torch.zeros(channels, dtype=torch.float32, device=x.device)
    batch_variance = torch.zeros(channels, dtype=torch.float32, device=x.device)
    outputs = torch.nn.functional.batch_norm(
        x.permute(0, 3, 1, 2) if channels_last else x,
        batch_mean,
        batch_variance,
        weight=gamma,
        bias=beta,
        training=True,
        momentum=1.0,
        eps=layer.epsilon,
    )
    if channels_last:
        outputs = outputs.permute(0, 2, 3, 1)
    with torch.no_grad():
        variance = batch_variance * ((count - 1) / count)  # Biased, as Keras.
        _update_moving_statistics(layer, batch_mean, variance)
    return outputs


def _update_moving_statistics(layer, mean, variance):
    """`s <- momentum * s + (1 - momentum) * statistic`, as Keras' layer."""
    momentum = layer.momentum
    layer.moving_mean.assign(
        layer.moving_mean.value * momentum + mean * (1.0 - momentum)
    )
    layer.moving_variance.assign(
        layer.moving_variance.value * momentum + variance * (1.0 - momentum)
    )


def _tf_batch_norm(layer, x):
    """`batch_norm` on TensorFlow: one `FusedBatchNormV3` each way.

    Keras' TensorFlow `BatchNormalization` in training is `tf.nn.moments`
    plus `tf.nn.batch_normalization`: about ten element-wise and reduction
    ops over the activations forward, more in the gradient, which Grappler
    does not fuse (XLA would, but `jit_compile="auto"` runs TensorFlow on
    CPU without it). The fused kernel returns the batch's unbiased
    variance (`n / (n - 1)` times the biased one); the moving statistics
    take Keras' biased variance back from it.

    Under a mixed policy (`x` in float16 or bfloat16) Keras casts `x` to
    float32, normalises in float32 and casts the result back; the kernel
    takes `x` as it is (`T`), computes in float32 (`U`, the type of the
    scale, offset and statistics) and rounds its result, and the gradient
    with respect to `x`, to `T` once, as Keras' casts do. Widening
    float16/bfloat16 to float32 is exact, so this changes only the float32
    reduction order, as for float32 inputs; it saves the two casts and the
    unfused ops (on a CPU with bfloat16 instructions, what lets
    `mixed_bfloat16` train faster than float32: `benchmarks/README.md`).
    """
    import tensorflow as tf

    channels = x.shape[-1]
    scale = layer.gamma.value if layer.scale else tf.ones((channels,), "float32")
    offset = layer.beta.value if layer.center else tf.zeros((channels,), "float32")
    outputs, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=tf.convert_to_tensor(scale),
        offset=tf.convert_to_tensor(offset),
        mean=tf.constant([], "float32"),
        variance=tf.constant([], "float32"),
        epsilon=layer.epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    )
    count = tf.cast(tf.reduce_prod(tf.shape(x, out_type=tf.int64)[:-1]), "float32")
    # n = 1: Keras' variance is 0; the kernel's n / (n - 1) is inf or nan.
    variance = tf.math.multiply_no_nan(unbiased, (count - 1.0) / count)
    _update_moving_statistics(layer, tf.stop_gradient(mean), tf.stop_gradient(variance))
    return outputs


def ema_update(student_variables, teacher_variables, alpha):
    """`theta' <- alpha * theta' + (1 - alpha) * theta`, as `foreach` ops.

    The same three roundings per element as the generic
    `alpha * teacher + (1 - alpha) * student` (multiply, multiply, add),
    so the result is bitwise that of `update_mean_teacher`'s loop.

    Args:
        student_variables: list of float32 `keras.Variable`s, `theta`.
        teacher_variables: list of `keras.Variable`s of the same shapes and
            dtypes, `theta'`, updated in place.
        alpha: scalar float32 torch tensor, the decay of this step.
    """
    import torch

    with torch.no_grad():
        teachers = [t.value for t in teacher_variables]
        students = [s.value for s in student_variables]
        weighted = _compat.foreach_mul(students, 1.0 - alpha)
        _compat.foreach_mul_(teachers, alpha)
        _compat.foreach_add_(teachers, weighted)
