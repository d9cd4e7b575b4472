"""Exporting a peer: every format this backend writes, reloaded elsewhere."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl.export import FORMATS
from keras_pcl.export import format_for_path
from keras_pcl.export import serving_model
from tests.testing import colour_dataset
from tests.testing import float32_atol
from tests.testing import tiny_backbone

BACKEND = keras.backend.backend()
WRITES = {
    "tensorflow": ["keras", "tf_saved_model", "onnx", "tflite"],
    "jax": ["keras", "tf_saved_model"],
    "torch": ["keras", "onnx"],
}[BACKEND]
PATHS = {
    "keras": "peer.keras",
    "tf_saved_model": "peer_saved_model",
    "onnx": "peer.onnx",
    "tflite": "peer.tflite",
}
RELOAD_SCRIPT = os.path.join(os.path.dirname(__file__), "reload_exported.py")


def make_model(**kwargs):
    keras.utils.set_random_seed(3)
    args = dict(num_classes=3, num_peers=3, split_at="split", rampup_steps=4)
    args.update(kwargs)
    return keras_pcl.PeerCollaborativeModel(tiny_backbone(), **args)


@pytest.fixture(scope="module")
def trained():
    x, y = colour_dataset(96, seed=0)
    x_val, y_val = colour_dataset(48, seed=1)
    model = make_model(
        preprocessing=keras.layers.Normalization(
            mean=[100.0, 90.0, 80.0], variance=[900.0, 1600.0, 2500.0]
        )
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[keras_pcl.callbacks.BestPeerTracker(verbose=0)],
    )
    return model, x_val


def softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_every_format_reloads_in_a_fresh_process_and_predicts_the_same(
    trained, tmp_path
):
    model, x_val = trained
    best = model.best_peer.peer
    images = x_val[:10].astype("float32")  # raw pixels in [0, 255]
    expected = keras.ops.convert_to_numpy(model.get_peer(best)(images, training=False))
    specs = []
    for format in WRITES:
        path = str(tmp_path / PATHS[format])
        model.export_peer(path, peer="best", format=format)
        specs.append(f"{format}={path}")
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, RELOAD_SCRIPT, str(tmp_path / "images.npy"), str(tmp_path)]
        + specs,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for format in WRITES:
        tolerance = 1e-3 if format == "tflite" else 1e-5
        logits = np.load(tmp_path / f"{format}_logits.npy")
        np.testing.assert_allclose(logits, expected, atol=tolerance, err_msg=format)
        if format == "keras":
            continue
        probabilities = np.load(tmp_path / f"{format}_probabilities.npy")
        np.testing.assert_allclose(
            probabilities, softmax(expected), atol=tolerance, err_msg=format
        )
        if format == "tf_saved_model":  # the uint8 signature, same pixels
            np.testing.assert_allclose(
                np.load(tmp_path / f"{format}_uint8_logits.npy"),
                expected,
                atol=1e-5,
            )


@pytest.mark.parametrize("format", sorted(set(FORMATS) - set(WRITES)))
def test_a_format_this_backend_cannot_write_says_which_can(trained, tmp_path, format):
    model, _ = trained
    with pytest.raises(ValueError, match="cannot be written with the .* backend"):
        model.export_peer(str(tmp_path / PATHS[format]), peer=0, format=format)
    assert not os.path.exists(tmp_path / PATHS[format])


def test_exported_network_has_the_standalone_backbone_parameter_count(trained):
    model, _ = trained
    features = 6  # tiny_backbone's pooled width
    # Normalization(mean=..., variance=...) holds constants, no weights.
    standalone = tiny_backbone().count_params() + features * 3 + 3
    peer = model.get_peer(0)
    assert peer.count_params() == standalone
    serving = serving_model(peer)
    assert serving.count_params() == standalone
    # Nothing of the training-time model: no other peer, no ensemble head.
    kinds = {type(layer).__name__ for layer in peer.layers}
    assert "RandomFlip" not in kinds and "RandomPadCrop" not in kinds
    names = [w.path for w in serving.weights]
    assert not any("ensemble" in n or "peer_1" in n or "peer_2" in n for n in names)


def test_keras_export_is_the_plain_network(trained, tmp_path):
    model, x_val = trained
    path = str(tmp_path / "student.keras")
    exported = model.export_peer(path, peer=1, mean_teacher=False, format="keras")
    reloaded = keras.saving.load_model(path)
    images = x_val[:4].astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)),
        keras.ops.convert_to_numpy(model.get_peer(1, mean_teacher=False)(images)),
        atol=1e-5,
    )
    assert reloaded.count_params() == exported.count_params()


def test_peer_best_and_deploy_resolve_to_the_recorded_peers(trained, tmp_path):
    model, _ = trained
    assert model.best_peer is not None
    assert model.deploy_peer == model.best_peer.peer
    from keras_pcl.deployment import resolve_peer

    assert resolve_peer(model, "best") == model.best_peer.peer
    assert resolve_peer(model, "deploy") == model.deploy_peer
    assert resolve_peer(model, 2) == 2


def test_channels_first_network_is_served_channels_last():
    # Flatten + Dense: the output depends on the layout (and runs on
    # TensorFlow's CPU, which has no channels-first convolutions).
    inputs = keras.Input((3, 8, 8))
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    network = keras.Model(inputs, logits)
    serving = serving_model(network, data_format="channels_first")
    nhwc = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    # Logits of raw pixels reach ~400, where one float32 ulp is 3e-5: the
    # old atol=1e-5 demanded bit-equal sums. The serving graph may fuse or
    # reorder the 192-term dot product (and the bias add), which changes it
    # by a few ulps of sum |w x| (~2500 here): atol = 4 ulps of that, ~1e-3.
    # A wrong layout changes the logits by tens to hundreds.
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in network.weights)
    flat = nhwc.transpose(0, 3, 1, 2).reshape(2, -1)
    magnitude = (np.abs(flat) @ np.abs(kernel) + np.abs(bias)).max()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(serving(nhwc)["logits"]),
        keras.ops.convert_to_numpy(network(nhwc.transpose(0, 3, 1, 2))),
        rtol=0,
        atol=float32_atol(magnitude, k=4),
    )


def test_bad_export_arguments_raise_clear_errors(trained, tmp_path):
    model, _ = trained
    path = str(tmp_path / "peer.keras")
    with pytest.raises(
        ValueError, match=r"`peer` must be a peer index in \[0, 2\].*peer=3"
    ):
        model.export_peer(path, peer=3, format="keras")
    with pytest.raises(ValueError, match="`peer` must be 'best', 'deploy' or an int"):
        model.export_peer(path, peer="first", format="keras")
    with pytest.raises(ValueError, match="`format` must be one of .*format='pb'"):
        model.export_peer(path, peer=0, format="pb")
    with pytest.raises(
        ValueError, match=r"format 'keras' writes a file ending in '\.keras'"
    ):
        model.export_peer(str(tmp_path / "peer.h5"), peer=0, format="keras")
    model.export_peer(path, peer=0, format="keras")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.export_peer(path, peer=0, format="keras")
    model.export_peer(path, peer=0, format="keras", overwrite=True)


def test_peer_best_without_a_record_raises():
    model = make_model()
    assert model.best_peer is None
    with pytest.raises(ValueError, match="no best peer recorded.*BestPeerTracker"):
        model.export_peer("unused.keras", peer="best", format="keras")


@pytest.mark.backend_independent  # Backend-independent: file names only.
def test_the_format_follows_the_file_extension():
    assert format_for_path("m.keras") == "keras"
    assert format_for_path("m.onnx") == "onnx"
    assert format_for_path("m.tflite") == "tflite"
    assert format_for_path("served/resnet32") == "tf_saved_model"
    assert format_for_path("m.onnx", "onnx") == "onnx"
    with pytest.raises(
        ValueError,
        match=r"extension of format 'onnx', but format='tf_saved_model'.*"
        r"pass format='onnx'",
    ):
        format_for_path("model.onnx", "tf_saved_model")
    with pytest.raises(ValueError, match=r"format 'tflite' writes a file ending"):
        format_for_path("served/resnet32", "tflite")


# Backend-independent: refused before anything is built.


@pytest.mark.backend_independent
def test_a_saved_model_is_not_written_under_an_onnx_name(tmp_path):
    model = make_model()
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="format='tf_saved_model'"):
        model.export_peer(str(path), peer=0, format="tf_saved_model")
    assert not path.exists()


def test_without_a_format_the_extension_decides(trained, tmp_path):
    model, x_val = trained
    path = str(tmp_path / "peer.keras")
    model.export_peer(path, peer=0)  # Before: a SavedModel named peer.keras.
    assert os.path.isfile(path)
    images = x_val[:4].astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.saving.load_model(path)(images)),
        keras.ops.convert_to_numpy(model.get_peer(0)(images)),
        atol=1e-5,  # The same float32 network, reloaded.
    )
