"""Class names travel with the network; `evaluate` refuses other classes."""

import os
import shutil
import warnings

import keras
import pytest

import keras_pcl
from keras_pcl import export
from keras_pcl.training import evaluation
from tests.data.images import CLASSES
from tests.data.images import make_folder
from tests.testing import tiny_backbone

BACKEND = keras.backend.backend()


def make_model():
    keras.utils.set_random_seed(5)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), num_classes=3, split_at="split", rampup_steps=4
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


@pytest.fixture
def folders(tmp_path):
    """The training folder and the same images under other class names."""
    right = str(tmp_path / "right")
    make_folder(right, per_class=(2, 2, 2))
    renamed = str(tmp_path / "renamed")
    shutil.copytree(right, renamed)
    for name in CLASSES:
        os.rename(os.path.join(renamed, name), os.path.join(renamed, f"x_{name}"))
    return right, renamed


def evaluate(network_path, folder):
    network = evaluation.load_network(network_path)
    data = evaluation.evaluation_data(folder, "all", image_shape=network.image_shape)
    evaluation.check_compatible(network, data, folder)
    return evaluation.score(network, data)


FORMATS = [
    ("keras", ".keras", ("tensorflow", "jax", "torch")),
    # TensorFlow writes a SavedModel and ONNX too, through the same code, in
    # 23 s and 12 s (JAX's SavedModel: 3 s, torch's ONNX: 2 s): CI checks
    # them on JAX and torch (tests/ci_budget.py).
    pytest.param(
        "tf_saved_model",
        "",
        ("tensorflow", "jax"),
        marks=pytest.mark.backend_independent(on="jax"),
    ),
    pytest.param(
        "onnx",
        ".onnx",
        ("tensorflow", "torch"),
        marks=pytest.mark.backend_independent(on="torch"),
    ),
]


@pytest.mark.parametrize("format, suffix, backends", FORMATS)
def test_an_export_carries_its_class_names_and_evaluate_checks_them(
    tmp_path, folders, format, suffix, backends
):
    if BACKEND not in backends:
        pytest.skip(f"{BACKEND} does not write {format} (keras_pcl.export)")
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    right, renamed = folders
    model = make_model()
    model.class_names = CLASSES
    path = str(tmp_path / f"exported{suffix}")
    model.export_peer(path, peer=0, format=format)
    assert export.read_class_names(path) == CLASSES
    assert evaluate(path, right)["num_examples"] == 6
    with pytest.raises(ValueError) as error:
        evaluate(path, renamed)
    assert "['blue', 'green', 'red']" in str(error.value)
    assert "['x_blue', 'x_green', 'x_red']" in str(error.value)


def test_the_same_names_in_another_order_are_refused():
    # An image folder lists its classes sorted; another source (tfds, a list
    # of names) may not: label i would then be another class.
    network = evaluation.Network(None, 3, (8, 8, 3), "net", class_names=CLASSES)
    data = evaluation.EvaluationData(None, CLASSES[::-1], 0, "data")
    with pytest.raises(ValueError, match="the same names in another order"):
        evaluation.check_class_names_match(network, data, "data")


def test_the_full_model_keeps_its_class_names_through_save_and_load(tmp_path):
    model = make_model()
    model.class_names = ["blue", "green", "red"]
    path = str(tmp_path / "pcl.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.class_names == CLASSES
    assert evaluation.load_network(path).class_names == CLASSES
    # `keras-pcl export` of the loaded checkpoint writes them on.
    loaded.export_peer(str(tmp_path / "peer.keras"), peer=1, format="keras")
    assert export.read_class_names(str(tmp_path / "peer.keras")) == CLASSES


def test_an_export_without_class_names_warns_loudly(tmp_path, folders):
    right, _ = folders
    model = make_model()  # No class names: as an older export.
    path = str(tmp_path / "old.keras")
    model.export_peer(path, peer=0, format="keras")
    assert export.read_class_names(path) is None
    with pytest.warns(UserWarning, match="does not record its class names"):
        evaluate(path, right)


@pytest.mark.parametrize(
    "names, message",
    [
        (["a", "b"], "3 distinct names"),
        (["a", "a", "b"], "3 distinct names"),
        ("abc", "a list of str"),
        ([0, 1, 2], "a list of str"),
    ],
)
def test_bad_class_names_raise(names, message):
    model = make_model()
    with pytest.raises(ValueError, match=message):
        model.class_names = names


# `keras-pcl train` + `evaluate`: thin wrappers (ci_budget.py).


@pytest.mark.backend_independent
def test_keras_pcl_evaluate_refuses_a_folder_of_other_classes(
    tmp_path, folders, capsys
):
    from keras_pcl import cli

    right, renamed = folders
    workdir = str(tmp_path / "run")
    args = [
        "train",
        f"--dataset={right}",
        "--backbone=resnet8",
        "--num_peers=2",
        "--epochs=1",
        "--batch_size=2",
        "--validation_split=0.5",
        "--lr_decay_epochs=1",
        f"--workdir={workdir}",
        "--export_format=keras",
        "--verbose=0",
    ]
    assert cli.main(args) == 0
    for network in ("export.keras", "pcl.keras", "best_peer.keras"):
        path = os.path.join(workdir, network)
        capsys.readouterr()
        command = ["evaluate", path, f"--dataset={renamed}", "--split=all"]
        assert cli.main(command) == 1
        error = capsys.readouterr().err
        assert "['blue', 'green', 'red']" in error, error
        assert "['x_blue', 'x_green', 'x_red']" in error, error
        with warnings.catch_warnings():
            # Names known: no warning about them.
            warnings.filterwarnings("error", message=".*class names")
            command = ["evaluate", path, f"--dataset={right}", "--split=all"]
            assert cli.main(command) == 0
