"""Fused views: one trunk pass over all peers' views, exactly.

PCL runs the shared trunk once per peer view in every training step (and
the mean-teacher trunk as often again): `m` passes over batches of `B`.
`ViewBatchedNetwork` runs the `m` views as one batch of `m * B` instead,
which keeps an accelerator busier. That is exact only if no layer mixes the
examples of a batch, except batch normalisation, which `ViewBatchedNetwork`
computes per view: each view's rows of the fused batch are normalised with
their own statistics, and the moving statistics are updated `m` times in view
order. Forward values, gradients and moving statistics then equal those of
`m` separate training-mode calls, up to float32 reduction order.

* `fusable(network)` says whether a network can be fused, and if not, which
  layer stands in the way. It is an allow-list: layers known to compute
  each example independently (`PER_EXAMPLE_LAYERS`), batch normalisation
  (replaced), and functional models nested in the network, checked inside.
  Anything else (dropout and other random layers, custom layers, subclassed
  models, raw `keras.ops` operations in the graph) is refused.
* `ViewBatchedNetwork(network, num_views)` is the training-time substitute
  for `[network(v, training=True) for v in views]`. It is a plain Python
  object, not a layer: it owns no variables and calls the network's own
  layers, so a model that holds it has exactly the variables it had (JAX's
  stateless training maps variables by identity; torch sees the same
  Parameters).

Written by hand, and why: Keras has no public API to walk a functional
graph or to call a layer on part of a batch. The walk below does what
`keras.src.models.functional.Functional.call` does (`_run_through_graph`,
Keras 3.15), node by node, on the private `Node` attributes `arguments`,
`outputs`, `input_tensors` and `is_input`, reached through
`keras_pcl._compat.inbound_node`.
"""

import keras
from keras import ops

from keras_pcl import _compat
from keras_pcl import fast_paths
from keras_pcl._compat import inbound_node
from keras_pcl.validation import check_bool
from keras_pcl.validation import check_int


def _layers(*names):
    """The `keras.layers` classes of these names that this Keras has."""
    return tuple(
        getattr(keras.layers, name) for name in names if hasattr(keras.layers, name)
    )


# Layers whose output for an example depends on that example only, and
# which draw no random numbers. Matched by exact class: a subclass may
# override `call` with anything (see `fusable`'s `per_example_layers`).
PER_EXAMPLE_LAYERS = _layers(
    # Linear maps.
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Dense",
    # Activations.
    "Activation",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    # Pooling, padding, cropping, resampling.
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "Resizing",
    "CenterCrop",
    # Merging (along a non-batch axis: checked).
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    # Per-example normalisation (over non-batch axes: checked), and fixed
    # statistics.
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "Rescaling",
    "Normalization",
    # Shapes.
    "Identity",
    "Flatten",
    "Reshape",
    "Permute",
    "RepeatVector",
)

# Layers whose `axis` must not be the batch axis for them to be per-example.
_AXIS_LAYERS = _layers(
    "Concatenate",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "Softmax",
    "BatchNormalization",
)


def fusable(network, per_example_layers=()):
    """Whether `ViewBatchedNetwork` can run `network` exactly, and why not.

    A network is fusable when it is a functional `keras.Model` with one
    input and one output whose every layer is either in `PER_EXAMPLE_LAYERS`
    (or `per_example_layers`), a `BatchNormalization` layer (without
    `renorm` or `synchronized`), or a functional model that is itself
    fusable. Layers are matched by exact class.

    Args:
        network: the network to check (e.g. a PCL trunk).
        per_example_layers: extra layer classes that the caller knows to
            compute each example independently, with no randomness.

    Returns:
        `(True, None)`, or `(False, reason)` where `reason` is a sentence
        naming the layer (or what else) that prevents fusion, and its class.

    Example:

    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    >>> x = keras.layers.Dropout(0.1, name="drop")(x)
    >>> fusable(keras.Model(inputs, x, name="net"))[1].split(":")[0]
    "Layer 'drop' (Dropout) of model 'net' draws random numbers in training"
    """
    allowed = PER_EXAMPLE_LAYERS + tuple(per_example_layers)
    try:
        _graph_plan(network, allowed)
    except _NotFusable as error:
        return False, str(error)
    return True, None


class ViewBatchedNetwork:
    """Runs `network` on several views as one batch, with per-view batch norm.

    `ViewBatchedNetwork(network, m)(views, training=True)` returns what
    `[network(v, training=True) for v in views]` returns, in the same order,
    and leaves every batch-normalisation layer's moving statistics as those
    `m` calls would: with Keras' update `s <- momentum * s + (1 - momentum)
    * batch_statistic` (biased variance, computed in float32 as Keras does,
    also under mixed precision), applied once per view in view order, i.e.
    `s <- momentum**m * s + (1 - momentum) * sum_i momentum**(m - i) * s_i`.
    The updates are computed in that sequential form, which rounds like
    `m` separate calls.

    The network's own layers run on one batch of `m * B` rows, view-major
    (rows `i * B` to `(i + 1) * B` are view `i`); a batch-normalisation layer in
    training mode (`training=True` and the layer `trainable`) normalises
    each view's `B` rows with their own mean and variance and its own
    `gamma`, `beta`, `axis` and `epsilon`. A layer that is not trainable
    runs in inference mode, as in Keras. The
    mean-teacher trunk (frozen variables, trainable layers) therefore
    updates its statistics like the student's.

    It owns no variables and is not a `keras.layers.Layer`, so assigning it
    to an attribute of a model adds nothing to `model.weights`. Everything
    runs through `keras.ops` and the layers' own `__call__`, so it traces
    under `jit_compile` and `steps_per_execution` on every backend; the
    graph walk happens at trace time.

    With `fast=True` (torch and TensorFlow backends), the layers that
    `keras_pcl.fast_paths` covers run through its fast paths (torch:
    channels-last convolutions without layout copies, `ReLU` and `Add`
    without `Layer.__call__`; with one view, batch normalisation with the
    backend's fused kernel on either backend): the same numbers up to
    float32 reduction order.

    Args:
        network: a functional `keras.Model` for which `fusable` holds (any
            functional model of layers when `num_views` is 1).
        num_views: int >= 1, the number of views `m` per call.
        per_example_layers: as in `fusable`.
        fast: bool, use `keras_pcl.fast_paths` where they apply (torch
            and TensorFlow backends only; default False).

    Raises:
        ValueError: if `network` is not fusable (with `fusable`'s reason).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    >>> x = keras.layers.BatchNormalization(name="bn")(x)
    >>> fused = ViewBatchedNetwork(keras.Model(inputs, x), num_views=2)
    >>> views = [np.ones((5, 8, 8, 3), "float32")] * 2
    >>> [tuple(y.shape) for y in fused(views)]
    [(5, 6, 6, 4), (5, 6, 6, 4)]
    """

    def __init__(self, network, num_views, per_example_layers=(), fast=False):
        check_int("num_views", num_views, minimum=1)
        check_bool("fast", fast)
        if fast and keras.backend.backend() not in ("torch", "tensorflow"):
            raise ValueError(
                "`fast=True` uses PyTorch or TensorFlow kernels and needs the "
                "torch or tensorflow backend. Received: fast=True with backend "
                f"{keras.backend.backend()!r}"
            )
        # One view runs the network as it is: any layer (dropout, a layer
        # that mixes the batch) computes what `network(view)` computes.
        allowed = (
            None if num_views == 1 else PER_EXAMPLE_LAYERS + tuple(per_example_layers)
        )
        try:
            plan = _graph_plan(network, allowed)
        except _NotFusable as error:
            raise ValueError(
                "`network` must compute each example independently, apart "
                f"from batch normalisation, to run its views fused: {error} "
                f"Received: network={getattr(network, 'name', network)!r}"
            ) from None
        self.network = network
        self.num_views = num_views
        self.fast = fast
        self._plan = plan

    def __call__(self, views, training=True):
        """Per-view outputs of `network` on `views` (a list of `num_views`)."""
        views = list(views)
        if len(views) != self.num_views:
            raise ValueError(
                f"`views` must be a list of num_views={self.num_views} "
                f"tensors. Received: {len(views)} views"
            )
        if self.num_views == 1:
            return _run(self._plan, views, 1, bool(training), self.fast)
        # View-major: rows `i * B` to `(i + 1) * B` are view i, so joining
        # and splitting are contiguous copies and each view's statistics a
        # contiguous block (an example-major interleave measured 25-65%
        # slower per PCL step on CPU, with JAX and torch). The statistics
        # are global means either way, so batch sharding (JAX
        # `DataParallel`) stays exact.
        batch = ops.concatenate(views, axis=0)
        (output,) = _run(self._plan, [batch], self.num_views, bool(training), self.fast)
        return ops.split(output, self.num_views, axis=0)

    def __repr__(self):
        return (
            f"ViewBatchedNetwork(network={self.network.name!r}, "
            f"num_views={self.num_views})"
        )


# ----------------------------------------------------------------------
# Graph walk
# ----------------------------------------------------------------------


class _NotFusable(Exception):
    pass


class _Plan:
    """A network's nodes in execution order, with nested models' plans."""

    def __init__(self, network, nodes, nested):
        self.network = network
        self.nodes = nodes
        self.nested = nested  # id(node) -> _Plan of the model it calls.


def _graph_plan(network, allowed):
    name = getattr(network, "name", repr(network))
    if not isinstance(network, keras.Model):
        raise _NotFusable(f"'{name}' ({type(network).__name__}) is not a keras.Model.")
    try:
        inputs, outputs = list(network.inputs), list(network.outputs)
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise _NotFusable(
            f"Model '{name}' ({type(network).__name__}) has no functional "
            "graph to inspect (a subclassed model)."
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise _NotFusable(
            f"Model '{name}' has {len(inputs)} inputs and {len(outputs)} "
            "outputs; only models with one input and one output are fused."
        )
    nodes = _topological_nodes(inputs, outputs)
    nested = {}
    for node in nodes:
        operation = node.operation
        _check_operation(operation, node, name, allowed)
        if isinstance(operation, keras.Model):
            try:
                nested[id(node)] = _graph_plan(operation, allowed)
            except _NotFusable as error:
                raise _NotFusable(
                    f"In model '{operation.name}' nested in '{name}': {error}"
                ) from None
    return _Plan(network, nodes, nested)


def _topological_nodes(inputs, outputs):
    """The nodes from `inputs` to `outputs`, each after those it reads."""
    input_ids = {id(t) for t in inputs}
    order, seen = [], set()
    # Iterative depth-first post-order (deep networks exceed recursion).
    stack = [(t, False) for t in reversed(outputs)]
    while stack:
        tensor, expanded = stack.pop()
        if id(tensor) in input_ids:
            continue
        node = inbound_node(tensor)
        if expanded:
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
            continue
        if id(node) in seen:
            continue
        stack.append((tensor, True))
        for parent in reversed(list(node.input_tensors)):
            stack.append((parent, False))
    return order


def _check_operation(operation, node, model_name, allowed):
    """Raises `_NotFusable` unless `operation` maps each example alone.

    `allowed=None` (one view): any layer, but still no raw `keras.ops` node.
    """
    kind = type(operation).__name__
    where = f"'{operation.name}' ({kind}) of model '{model_name}'"
    if isinstance(operation, keras.layers.InputLayer) or node.is_input:
        return
    if isinstance(operation, keras.Model):
        return  # Checked inside by the caller.
    if not isinstance(operation, keras.layers.Layer):
        raise _NotFusable(
            f"Operation {where} is a raw `keras.ops` call in the graph; "
            "only layers are checked for fusion (use the equivalent "
            "keras.layers layer, e.g. `keras.layers.Add` for `x + y`)."
        )
    if allowed is None:
        return
    if any(v.name == "seed_generator_state" for v in operation.variables):
        raise _NotFusable(
            f"Layer {where} draws random numbers in training: one draw for "
            "the fused batch differs from one draw per view."
        )
    if type(operation) is keras.layers.BatchNormalization:
        if operation.renorm or operation.synchronized:
            option = "renorm" if operation.renorm else "synchronized"
            raise _NotFusable(
                f"Layer {where} uses `{option}=True`, whose statistics are "
                "not computed per view."
            )
    elif type(operation) not in allowed:
        raise _NotFusable(
            f"Layer {where} is not known to compute each example of a batch "
            "independently (it may mix the examples of a batch). If it "
            "does not, pass its class in `per_example_layers`."
        )
    if isinstance(operation, _AXIS_LAYERS):
        rank = len(node.input_tensors[0].shape)
        axes = operation.axis
        axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
        if any(a is not None and a % rank == 0 for a in axes):
            raise _NotFusable(
                f"Layer {where} works along the batch axis "
                f"(axis={operation.axis!r}), which mixes examples."
            )


def _run(plan, inputs, num_views, training, fast):
    """Outputs of `plan.network` on `inputs` (the fused batch)."""
    network = plan.network
    tensors = {}
    for reference, value in zip(network.inputs, inputs):
        # What `Layer.__call__` and `Functional._standardize_inputs` do to a
        # model's inputs: the model's autocast, then its inputs' dtype.
        value = network.dtype_policy.convert_input(
            value, network.autocast, network.input_dtype
        )
        tensors[id(reference)] = ops.convert_to_tensor(value, dtype=reference.dtype)
    for node in plan.nodes:
        operation = node.operation
        args, kwargs = node.arguments.fill_in(tensors)
        if id(node) in plan.nested:
            nested_inputs = keras.tree.flatten(args)
            outputs = _run(
                plan.nested[id(node)], nested_inputs, num_views, training, fast
            )
        elif fast and _fast_path_applies(operation, args, kwargs, num_views, training):
            outputs = fast_paths.call(operation, args[0])
        elif type(operation) is keras.layers.BatchNormalization:
            outputs = _batch_norm(operation, args[0], num_views, training)
        else:
            # As `Functional.call`: every layer gets the caller's training
            # flag, which overrides one recorded in the graph.
            kwargs = {**kwargs, "training": training}
            outputs = operation(*args, **kwargs)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for reference, value in zip(node.outputs, outputs):
            tensors[id(reference)] = value
    return [tensors[id(reference)] for reference in network.outputs]


def _fast_path_applies(layer, args, kwargs, num_views, training):
    """Whether `keras_pcl.fast_paths` computes this call exactly."""
    if len(args) != 1 or kwargs.get("mask") is not None:
        return False
    inputs = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
    if any(_compat.keras_mask(t) is not None for t in inputs):
        return False  # `Layer.__call__` would propagate the mask.
    if type(layer) is keras.layers.BatchNormalization and num_views != 1:
        return False  # Per-view statistics: `_batch_norm`.
    return fast_paths.covers(layer, args[0], training)


def _dims(x):
    """The shape of `x`, with dynamic sizes (e.g. the batch) as tensors."""
    return tuple(ops.shape(x)[i] if d is None else d for i, d in enumerate(x.shape))


def _batch_norm(layer, x, num_views, training):
    """`layer` on the fused batch `x`, with statistics per view group.

    The same steps as `BatchNormalization.call` (Keras 3.15) for the rows
    of each view (each block of `B` rows): float32 statistics
    (`ops.moments`, biased variance), the backend's normalisation formula,
    and one moving-average update per view, in order.
    """
    if not (training and layer.trainable) or num_views == 1:
        return layer(x, training=training)
    # `Layer.__call__`'s input conversion (mixed precision: to float16),
    # then BatchNormalization's own promotion to float32.
    x = layer.dtype_policy.convert_input(x, layer.autocast, layer.input_dtype)
    dtype = keras.backend.result_type(x.dtype, "float32")
    x = ops.cast(x, dtype)
    rank = len(x.shape)
    axis = layer.axis % rank  # Not 0: `fusable` refuses the batch axis.
    channels = x.shape[axis]
    inner = _dims(x)
    # (m, B, ...): the fused batch is view-major (see `__call__`).
    grouped = ops.reshape(x, (num_views, -1) + inner[1:])
    # Keras reduces over every axis but `axis`; per view, over every axis
    # of `grouped` but the view axis 0 and the channel axis `axis + 1`.
    reduction = [1] + [a + 1 for a in range(1, rank) if a != axis]
    mean, variance = ops.moments(grouped, axes=reduction, keepdims=True)

    shape = [1] * (rank + 1)
    shape[axis + 1] = channels
    inv = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        inv = inv * ops.reshape(ops.cast(layer.gamma, dtype), shape)
    offset = ops.reshape(ops.cast(layer.beta, dtype), shape) if layer.center else None
    if keras.backend.backend() == "torch":
        # keras.src.backend.torch.nn.batch_normalization's order.
        outputs = (grouped - mean) * inv
        if offset is not None:
            outputs = outputs + offset
    else:  # TensorFlow's `tf.nn.batch_normalization` and JAX: one FMA form.
        shift = -mean * inv if offset is None else offset - mean * inv
        outputs = grouped * inv + shift
    outputs = ops.reshape(outputs, (-1,) + inner[1:])

    # `mean` is (m, 1, ..., channels, ..., 1): in row-major order, (m, C).
    means = ops.stop_gradient(ops.reshape(mean, (num_views, channels)))
    variances = ops.stop_gradient(ops.reshape(variance, (num_views, channels)))
    moving_mean = ops.cast(layer.moving_mean, dtype)
    moving_variance = ops.cast(layer.moving_variance, dtype)
    momentum = layer.momentum
    for i in range(num_views):  # m separate calls' updates, in view order.
        moving_mean = moving_mean * momentum + means[i] * (1.0 - momentum)
        moving_variance = moving_variance * momentum + variances[i] * (1.0 - momentum)
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)
    return ops.cast(outputs, layer.compute_dtype)
