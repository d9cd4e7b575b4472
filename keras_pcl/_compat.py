"""Every place where keras-pcl relies on Keras or backend internals.

One module to audit on a Keras (or TensorFlow, PyTorch) upgrade: each
function below wraps one private attribute or one backend quirk, says why
no public API does the job, and which Keras version it was written against
(Keras 3.15, TensorFlow 2.21, torch 2.13). `tests/compat_test.py` checks
that each of them still behaves as assumed, so an upgrade that breaks one
fails there, by name, rather than deep inside a training step, and reads
the package's source to check that no private name is used anywhere else.
"""

import contextlib

import keras

# ----------------------------------------------------------------------
# Keras internals
# ----------------------------------------------------------------------


def aggregate_additional_loss(model, loss):
    """Keras' own aggregation of one `model.losses` entry (regularizers).

    `keras.Model.compute_loss` sums `model.losses` through the private
    `Trainer._aggregate_additional_loss`, which also scales them for
    `tf.distribute` replicas. Models that override `compute_loss` (as every
    keras-pcl model does) have no public way to get the same treatment.
    """
    return model._aggregate_additional_loss(loss)


def flatten_layers(layer):
    """Every layer nested inside `layer` (not `layer` itself), recursively.

    `Layer._flatten_layers` is how Keras itself walks nested layers; the
    public `Model.layers` lists the top level only, and a KerasHub or
    keras.applications block hides its sublayers from it.
    """
    return list(layer._flatten_layers(include_self=False))


def compiled_metrics(model):
    """The container of the metrics passed to `compile(metrics=...)`, or None.

    Keras keeps it in the private `Trainer._compile_metrics`; `model.metrics`
    lists its members only once built. keras-pcl's models ask whether there
    is one (to retrace when the deployed peer changes) and build it in
    their first trace when training skips it.
    """
    return getattr(model, "_compile_metrics", None)


def keras_mask(tensor):
    """The Keras mask attached to `tensor`, or None (`keras.Layer` sets it)."""
    return getattr(tensor, "_keras_mask", None)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with its private parts named.

    The one place that reaches into the parent class: a subclass overrides
    `save_backup` (called wherever Keras backs up, i.e. Keras' private
    `_save_model`), calls `write_backup` for Keras' own writing, and reads
    the file paths from the properties below, which Keras keeps private.
    """

    def _save_model(self):
        self.save_backup()

    def save_backup(self):
        """Called at each save point; writes the backup (`write_backup`)."""
        self.write_backup()

    def write_backup(self):
        """Keras' own writing of the weights and the training metadata."""
        super()._save_model()

    @property
    def weights_path(self):
        """The newest backup's weights file."""
        return self._weights_path

    @property
    def previous_weights_path(self):
        """The previous backup's weights file (Keras' `.bkp`)."""
        return self._prev_weights_path

    @property
    def metadata_path(self):
        """The newest backup's epoch and batch (JSON)."""
        return self._training_metadata_path

    @property
    def previous_metadata_path(self):
        """The previous backup's epoch and batch (JSON)."""
        return self._prev_training_metadata_path


def keras_history(tensor):
    """`(operation, node_index, tensor_index)` of a symbolic Keras tensor.

    Keras has no public API to walk a functional graph backwards from a
    tensor; `keras_pcl.splitting` needs it to find split points.
    """
    return tensor._keras_history


def inbound_node(tensor):
    """The graph node that produced symbolic `tensor` (private in Keras)."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def scale_loss_for_replicas(loss):
    """Divides a per-replica batch-mean loss by the number of replicas.

    Keras' TensorFlow trainer sums the gradients of all replicas of a
    `tf.distribute` strategy, so each replica's loss must be divided by their
    number to give the gradient of the global-batch mean; its logs multiply
    it back. Keras does this inside its compiled losses
    (`keras.src.losses.loss.scale_loss_for_distribution`, not public API);
    keras-pcl overrides `compute_loss`, so it is done here, the same way.
    Other backends (JAX `keras.distribution`) compute the global-batch mean
    directly.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
        return loss
    return loss * (1.0 / replicas)


def without_autocast():
    """A context in which Keras reads float variables in their own dtype.

    Inside a layer's `__call__` under a mixed-precision policy Keras sets
    an autocast scope: every float32 variable then reads (and reports its
    `dtype`) as float16 or bfloat16. The mean-teacher EMA runs inside the
    model's call and must read and compute in float32, the variables'
    storage dtype; `Layer.__call__` itself enters `AutocastScope(None)` for
    layers with `autocast=False`. Keras exports no public way to do so.
    """
    from keras.src.backend import AutocastScope

    return AutocastScope(None)


# ----------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------


def in_stateless_scope():
    """Whether Keras is inside a `StatelessScope` (symbolic shape inference).

    Keras' torch backend infers output shapes by running layers inside a
    `StatelessScope`, where `variable.assign` records an update instead of
    writing; `keras_pcl.fast_paths` writes PyTorch tensors in place, so it
    steps aside there. Keras exports the scope class but not the query.
    """
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


def foreach_mul(tensors, scalar):
    """`[t * scalar for t in tensors]` as one PyTorch multi-tensor op.

    `torch._foreach_mul`, which `torch.optim` uses for its `foreach`
    implementations; PyTorch has no public multi-tensor API.
    """
    import torch

    return torch._foreach_mul(tensors, scalar)


def foreach_mul_(tensors, scalar):
    """In place: `t *= scalar` for each tensor (`torch._foreach_mul_`)."""
    import torch

    torch._foreach_mul_(tensors, scalar)


def foreach_add_(tensors, others):
    """In place: `t += o` for each pair (`torch._foreach_add_`)."""
    import torch

    torch._foreach_add_(tensors, others)


def freeze_torch_variable(variable):
    """Stops autograd from recording a (non-trainable) Keras torch variable.

    Keras' torch `Variable` fixes `requires_grad` when it is created, and its
    `trainable` setter leaves it alone; without this, autograd would record
    every mean-teacher forward pass.
    """
    if keras.backend.backend() == "torch":
        variable.value.requires_grad_(False)


def clear_torch_gradients(variables):
    """Sets the torch `.grad` of every variable to None.

    Keras' torch trainer calls `model.zero_grad()` before each backward
    pass. The inherited `torch.nn.Module.zero_grad` only reaches variables
    that Keras registered with torch, keyed by `variable.path`; a backbone
    with nested models that repeat layer names has repeated paths, and the
    gradients of the unregistered variables would then accumulate over
    steps. Clearing them directly is exact whatever the names.
    """
    for variable in variables:
        variable.value.grad = None


# ----------------------------------------------------------------------
# TensorFlow
# ----------------------------------------------------------------------


@contextlib.contextmanager
def tensorflow_reads_before_writes():
    """Runs TensorFlow graph functions with Grappler's dependency pass off.

    The mean-teacher update reads each student weight at the start of the
    training step (spec section 4); the optimizer writes it at the end.
    `tf.function` orders the two with a control edge, but Grappler's
    dependency optimizer removes such edges from variable reads, and the
    optimizer's write then sometimes runs first: the mean teacher averages
    the *updated* weight (about 1 run in 12 of an 8-step test; 0 in 60 with
    this pass off). XLA (`jit_compile=True`), JAX and PyTorch keep the order.

    No data dependency can express "read before write" without changing the
    numbers, and Grappler's options are process-wide, so this is as narrow
    as TensorFlow allows: the pass is off only while a training function
    runs (TensorFlow reads the options at every call and keeps one
    optimised graph per setting), and the caller's setting is restored after.
    """
    import tensorflow as tf

    previous = tf.config.optimizer.get_experimental_options()
    if previous.get("dependency_optimization") is False:
        yield
        return
    tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
    try:
        yield
    finally:
        # Absent means on (TensorFlow's default); options can only be merged.
        tf.config.optimizer.set_experimental_options(
            {"dependency_optimization": previous.get("dependency_optimization", True)}
        )


def tensorflow_op_determinism():
    """Whether TensorFlow's op determinism is on.

    TensorFlow's public API (2.16-2.21) has `enable_op_determinism` only;
    reading the flag and turning it off again are in the module behind it.
    """
    from tensorflow.python.framework import config

    return config.is_op_determinism_enabled()


def disable_tensorflow_op_determinism():
    """Turns TensorFlow's op determinism off (see `tensorflow_op_determinism`)."""
    from tensorflow.python.framework import config

    config.disable_op_determinism()
