"""`keras_pcl._compat`: each Keras or backend internal still works as assumed.

A Keras (or TensorFlow, torch) upgrade that changes one of them fails here,
by name, instead of deep inside a training step.
"""

import ast
import os

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


def test_flatten_layers_reaches_layers_nested_in_a_block():
    inner = keras.Sequential([keras.layers.Dense(2), keras.layers.Dense(3)])
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(1)])
    assert len(outer.layers) == 2  # The public list stops at the top level.
    flat = set(map(id, _compat.flatten_layers(outer)))
    assert id(outer) not in flat
    assert {id(inner), id(outer.layers[1])} <= flat
    assert {id(layer) for layer in inner.layers} <= flat


def test_compiled_metrics_is_none_until_compile_names_some():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    assert _compat.compiled_metrics(model) is None
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    assert _compat.compiled_metrics(model) is not None


def test_keras_mask_reads_what_a_masking_layer_attaches():
    x = np.array([[[1.0], [0.0]]], "float32")
    masked = keras.layers.Masking(0.0)(x)
    mask = keras.ops.convert_to_numpy(_compat.keras_mask(masked))
    np.testing.assert_array_equal(mask, [[True, False]])
    assert _compat.keras_mask(keras.ops.convert_to_tensor(x)) is None


def test_backup_and_restore_hooks_are_keras_save_points_and_paths(tmp_path):
    calls = []

    class Counting(_compat.BackupAndRestore):
        def save_backup(self):
            calls.append(
                int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            )
            self.write_backup()

    x, y = colour_dataset(8, seed=0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    backup = Counting(
        str(tmp_path), save_freq=1, delete_checkpoint=False, double_checkpoint=True
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[backup])
    assert calls == [1, 2]  # Keras' save points with save_freq=1: each batch.
    for path in (backup.weights_path, backup.metadata_path):
        assert os.path.isfile(path), path
    # With double_checkpoint, Keras copies the newest backup to the previous
    # one before writing.
    assert os.path.isfile(backup.previous_weights_path)
    assert os.path.isfile(backup.previous_metadata_path)
    assert os.path.dirname(backup.weights_path) == str(tmp_path)


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


# Python's own underscore API, public despite the name.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}
PRIVATE_MODULES = ("keras.src", "tensorflow.python", "torch._")


def _package_sources():
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "keras_pcl")
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    yield (
                        os.path.relpath(path, os.path.dirname(root)),
                        ast.parse(f.read()),
                    )


def _own_names(trees):
    """Underscore names that keras-pcl itself defines or assigns."""
    names = set(PUBLIC_UNDERSCORE)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None))
                in ("setattr", "__setattr__")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return names


def test_every_private_access_is_in_compat():
    # Read from the source: an attribute, `getattr` or import of a name with
    # a leading underscore that keras-pcl does not define itself is a Keras,
    # TensorFlow or torch internal, and belongs in `_compat` (with a test
    # above). A private name that keras-pcl also assigns somewhere escapes
    # this check; the runtime check below covers overridden methods.
    sources = dict(_package_sources())
    own = _own_names(sources.values())
    found = []
    for path, tree in sources.items():
        if path.endswith("_compat.py"):
            continue
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                name = node.args[1].value
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                for module in modules:
                    if module.startswith(PRIVATE_MODULES):
                        found.append(f"{path}:{node.lineno} imports {module}")
            if (
                isinstance(name, str)
                and name.startswith("_")
                and not name.startswith("__")
                and name not in own
            ):
                found.append(f"{path}:{node.lineno} reads {name}")
    assert not found, found


def test_no_class_overrides_a_private_method_outside_compat():
    import importlib
    import inspect

    found = []
    for path in dict(_package_sources()):
        module = importlib.import_module(
            path[:-3].replace(os.sep, ".").removesuffix(".__init__")
        )
        if module.__name__ == "keras_pcl._compat":
            continue
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name in vars(cls):
                if not name.startswith("_") or name.startswith("__"):
                    continue
                for base in cls.__mro__[1:]:
                    external = not base.__module__.startswith("keras_pcl")
                    if external and name in vars(base):
                        found.append(f"{module.__name__}.{cls.__name__}.{name}")
    assert not found, found
