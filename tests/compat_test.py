"""`keras_pcl._compat`: each Keras or backend internal still works as assumed.

A Keras (or TensorFlow, torch) upgrade that changes one of them fails here,
by name, instead of deep inside a training step.
"""

import keras
import numpy as np
import pytest

from keras_pcl import _compat
from tests.testing import colour_dataset

BACKEND = keras.backend.backend()


def test_keras_history_and_inbound_node_walk_a_functional_graph():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="first")(inputs)
    outputs = keras.layers.Dense(2, name="second")(hidden)
    operation, node_index, tensor_index = _compat.keras_history(outputs)
    assert operation.name == "second"
    assert (node_index, tensor_index) == (0, 0)
    node = _compat.inbound_node(outputs)
    assert list(node.input_tensors) == [hidden]
    assert _compat.keras_history(node.input_tensors[0]).operation.name == "first"


def test_aggregate_additional_loss_sums_a_regularizer_loss():
    layer = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.5))
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    (regularization,) = model.losses
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    got = keras.ops.convert_to_numpy(
        _compat.aggregate_additional_loss(model, regularization)
    )
    # Independent: L2(0.5) is 0.5 * sum(w^2); float32 sum of 6 terms.
    np.testing.assert_allclose(got, 0.5 * np.sum(kernel**2), rtol=1e-6)


def test_scale_loss_for_replicas_is_the_identity_on_one_device():
    loss = keras.ops.convert_to_tensor(2.5)
    assert float(_compat.scale_loss_for_replicas(loss)) == 2.5


def test_clear_initial_epoch_resets_what_backup_and_restore_sets(tmp_path):
    x, y = colour_dataset(8, seed=0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[backup])
    restored = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    restored.set_model(model)
    restored.on_train_begin()
    assert model._initial_epoch == 2  # What Keras sets; `train` undoes it.
    _compat.clear_initial_epoch(model)
    assert model._initial_epoch is None


@pytest.mark.skipif(BACKEND != "torch", reason="torch autograd only")
def test_torch_variables_freeze_and_gradients_clear():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    kernel = layer.kernel
    assert kernel.value.requires_grad
    out = keras.ops.sum(layer(np.ones((1, 3), "float32")))
    out.backward()
    assert kernel.value.grad is not None
    _compat.clear_torch_gradients([kernel])
    assert kernel.value.grad is None
    kernel.trainable = False
    _compat.freeze_torch_variable(kernel)
    assert not kernel.value.requires_grad


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Grappler is TensorFlow's")
def test_tensorflow_reads_before_writes_is_scoped():
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    with _compat.tensorflow_reads_before_writes():
        inside = tf.config.optimizer.get_experimental_options()
        assert inside["dependency_optimization"] is False
    after = tf.config.optimizer.get_experimental_options()
    assert after.get("dependency_optimization", True) == before.get(
        "dependency_optimization", True
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's flag")
def test_tensorflow_op_determinism_can_be_read_and_turned_off():
    import tensorflow as tf

    before = _compat.tensorflow_op_determinism()
    tf.config.experimental.enable_op_determinism()
    assert _compat.tensorflow_op_determinism() is True
    _compat.disable_tensorflow_op_determinism()
    assert _compat.tensorflow_op_determinism() is False
    if before:
        tf.config.experimental.enable_op_determinism()


def test_in_stateless_scope_tells_a_stateless_scope_apart():
    assert not _compat.in_stateless_scope()
    with keras.StatelessScope():
        assert _compat.in_stateless_scope()


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's multi-tensor ops")
def test_foreach_ops_multiply_and_add_every_tensor():
    import torch

    a = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    b = [torch.tensor([0.5, 0.25]), torch.tensor([[4.0]])]
    product = _compat.foreach_mul(a, torch.tensor(2.0))
    assert [p.tolist() for p in product] == [[2.0, 4.0], [[6.0]]]
    _compat.foreach_mul_(a, 3.0)
    _compat.foreach_add_(a, b)
    assert [t.tolist() for t in a] == [[3.5, 6.25], [[13.0]]]


def test_without_autocast_reads_float32_variables_as_float32():
    seen = {}

    class Probe(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(2,), initializer="ones")

        def call(self, x):
            seen["autocast"] = keras.backend.standardize_dtype(self.w.value.dtype)
            with _compat.without_autocast():
                seen["without"] = keras.backend.standardize_dtype(self.w.value.dtype)
                seen["dtype"] = self.w.dtype
            return x

    Probe(dtype="mixed_float16")(np.ones((1, 2), "float32"))
    assert seen == {"autocast": "float16", "without": "float32", "dtype": "float32"}
