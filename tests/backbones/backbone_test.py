"""`Backbone`: config, dtype and saving of every built-in backbone."""

import json
import os

import keras
import numpy as np
import pytest

from keras_pcl import backbones

# The smallest network of each built-in class. VGG-16 and ResNet-18 have
# fixed widths and need 32x32 images: minutes to build on JAX
# (tests/ci_budget.py).
SMALL = {
    "CIFARResNet": (backbones.CIFARResNet, {"depth": 8, "input_shape": (8, 8, 3)}),
    "CIFARBottleneckResNet": (
        backbones.CIFARBottleneckResNet,
        {"depth": 11, "input_shape": (8, 8, 3)},
    ),
    "WideResNet": (
        backbones.WideResNet,
        {"depth": 11, "width_factor": 2, "input_shape": (8, 8, 3)},
    ),
    "CIFARDenseNet": (
        backbones.CIFARDenseNet,
        {"depth": 10, "growth_rate": 4, "input_shape": (8, 8, 3)},
    ),
    "VGG16BN": (backbones.VGG16BN, {}),
    "ImageNetResNet": (backbones.ImageNetResNet, {"input_shape": (32, 32, 3)}),
}
FULL_SIZE = ("VGG16BN", "ImageNetResNet")


def names():
    """`sorted(SMALL)`, the full-size networks marked `slow_on_jax`."""
    return [
        pytest.param(name, marks=pytest.mark.slow_on_jax) if name in FULL_SIZE else name
        for name in sorted(SMALL)
    ]


# JAX without `jax_enable_x64` stores float64 as float32 (and warns); the
# policies, which is what these tests check, are float64 all the same.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Explicitly requested dtype float64:UserWarning"
)


def small(name, **kwargs):
    cls, init_kwargs = SMALL[name]
    return cls(**init_kwargs, **kwargs)


def images(model, batch=2):
    shape = (batch,) + tuple(model.input.shape[1:])
    return np.random.default_rng(0).uniform(size=shape).astype("float32")


def run_config_round_trip(model):
    """JSON round trip of `get_config`, and Keras' (de)serialisation."""
    config = model.get_config()
    clone = type(model).from_config(json.loads(json.dumps(config)))
    assert type(clone) is type(model)
    assert clone.get_config() == config
    assert clone.name == model.name
    assert clone.default_split_at == model.default_split_at
    assert clone.count_params() == model.count_params()
    serialized = keras.saving.serialize_keras_object(model)
    assert serialized["registered_name"] == f"keras_pcl>{type(model).__name__}"
    clone = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(clone) is type(model) and clone.get_config() == config
    return clone


def run_saved_model_round_trip(model, tmp_path):
    """`.keras` save and load: same class, config, dtype and outputs."""
    path = os.path.join(tmp_path, "backbone.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(model)
    assert reloaded.get_config() == model.get_config()
    assert reloaded.dtype_policy.name == model.dtype_policy.name
    assert reloaded.default_split_at == model.default_split_at
    x = images(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    return reloaded


def layer_dtypes(model):
    """(compute dtype, variable dtypes) of each layer with weights."""
    return {
        (layer.compute_dtype, tuple(sorted({v.dtype for v in layer.weights})))
        for layer in model.layers
        if layer.weights
    }


@pytest.mark.parametrize("name", names())
def test_config_round_trip(name):
    run_config_round_trip(small(name, kernel_regularizer=keras.regularizers.L2(1e-4)))


@pytest.mark.parametrize("name", names())
def test_float64_config_round_trip(name):
    model = small(name, dtype="float64")
    assert model.dtype_policy.name == "float64"
    assert layer_dtypes(model) == {("float64", ("float64",))}
    assert keras.backend.standardize_dtype(model.output.dtype) == "float64"
    clone = run_config_round_trip(model)
    assert clone.dtype_policy.name == "float64"
    assert layer_dtypes(clone) == {("float64", ("float64",))}


@pytest.mark.parametrize(
    "dtype", ["float64", "mixed_bfloat16", keras.DTypePolicy("mixed_bfloat16")]
)
def test_dtype_survives_a_keras_file(dtype, tmp_path):
    model = small("CIFARResNet", dtype=dtype)
    policy = keras.dtype_policies.get(dtype)
    assert model.dtype_policy.name == policy.name
    expected = {(policy.compute_dtype, (policy.variable_dtype,))}
    assert layer_dtypes(model) == expected
    reloaded = run_saved_model_round_trip(model, tmp_path)
    assert layer_dtypes(reloaded) == expected
    assert keras.backend.standardize_dtype(reloaded.output.dtype) == (
        policy.compute_dtype
    )


@pytest.mark.parametrize("name", ["CIFARBottleneckResNet", "CIFARDenseNet"])
def test_keras_file_round_trip(name, tmp_path):
    run_saved_model_round_trip(small(name, dtype="float64"), tmp_path)


@pytest.fixture
def global_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")


def test_the_global_policy_is_recorded(global_mixed_bfloat16):
    model = small("CIFARResNet")
    config = model.get_config()
    keras.config.set_dtype_policy("float32")
    clone = backbones.CIFARResNet.from_config(config)
    assert clone.dtype_policy.name == "mixed_bfloat16"
    assert layer_dtypes(clone) == {("bfloat16", ("float32",))}


def test_a_config_without_dtype_loads_with_the_global_policy():
    # As written before `get_config` recorded the dtype policy.
    config = small("CIFARResNet", dtype="float64").get_config()
    del config["dtype"]
    clone = backbones.CIFARResNet.from_config(config)
    assert clone.dtype_policy.name == keras.config.dtype_policy().name
    assert clone.depth == 8 and clone.default_split_at == "stage2_block1_out"


def test_an_unknown_dtype_raises():
    with pytest.raises(ValueError, match="float65"):
        small("CIFARResNet", dtype="float65")


def test_arguments_are_attributes():
    model = small("WideResNet")
    assert (model.depth, model.width_factor) == (11, 2)
    assert model.image_shape == (8, 8, 3)
    assert model.data_format == keras.config.image_data_format()
    assert model.kernel_regularizer is None
    assert isinstance(model, backbones.Backbone)
