"""What every baseline of `keras_pcl.baselines` shares with PCL's API."""

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import baselines
from tests.testing import colour_dataset
from tests.testing import tiny_backbone

# The extra accuracy each method reports besides `peer_{j}_accuracy`.
EXPECTED_LOGS = {
    "vanilla": {"loss", "ce", "peer_0_accuracy"},
    "dml": {"loss", "ce", "kd", "ensemble_accuracy"},
    "kdcl": {"loss", "ce", "kd", "ensemble_accuracy"},
    "one": {"loss", "ce", "kd", "consistency_weight", "ensemble_accuracy"},
    "cl_ilr": {"loss", "ce", "kd", "consistency_weight", "ensemble_accuracy"},
    "okddip": {"loss", "ce", "kd", "consistency_weight", "ensemble_accuracy"},
}


def make(name, **kwargs):
    kwargs.setdefault("num_classes", 3)
    if name != "vanilla":
        kwargs.setdefault("num_peers", 3)
    if name in ("one", "cl_ilr", "okddip"):
        kwargs.setdefault("rampup_steps", 4)
        kwargs.setdefault("split_at", "split")
    return baselines.get(name)(tiny_backbone(), **kwargs)


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_trains_logs_deploys_and_round_trips(name, tmp_path):
    x, y = colour_dataset(48)
    model = make(name)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(
        x, y, batch_size=16, epochs=1, validation_data=(x[:16], y[:16]), verbose=0
    ).history
    peers = 1 if name == "vanilla" else 3
    # Every method logs `all_finite` (1.0 while the loss and the weights are
    # finite; `keras_pcl.callbacks.TerminateOnNonFinite` reads it).
    want = EXPECTED_LOGS[name] | {f"peer_{j}_accuracy" for j in range(peers)}
    want = want | {"all_finite"}
    assert set(history) == want | {f"val_{k}" for k in want}
    assert all(np.isfinite(v[-1]) for v in history.values())

    # The model's inference output is the deployed peer, which is a plain
    # standalone network. (Direct calls: `predict` would compile each.)
    images = x[:8].astype("float32")
    network = model.get_peer(model.deploy_peer)
    assert network.count_params() == (
        tiny_backbone().count_params() + 6 * 3 + 3  # backbone + Dense(3)
    )
    logits = logits_of(model, images)
    np.testing.assert_allclose(logits_of(network, images), logits, rtol=1e-5, atol=1e-5)

    # `.keras` round trip keeps weights, config and the deployed peer.
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    nested = ("backbone", "preprocessing")
    strip = lambda c: {k: v for k, v in c.items() if k not in nested}  # noqa: E731
    assert strip(loaded.get_config()) == strip(model.get_config())
    np.testing.assert_allclose(logits_of(loaded, images), logits, rtol=1e-5, atol=1e-5)
    # And the deployed network exports through the same path as PCL's.
    model.export_peer(str(tmp_path / "peer.keras"), peer="deploy", format="keras")
    exported = keras.saving.load_model(str(tmp_path / "peer.keras"))
    np.testing.assert_allclose(
        logits_of(exported, images), logits, rtol=1e-5, atol=1e-5
    )


def logits_of(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_best_peer_tracker_picks_peers_of_a_baseline():
    x, y = colour_dataset(32)
    model = make("dml")
    model.compile(optimizer="sgd")
    tracker = keras_pcl.callbacks.BestPeerTracker(verbose=0)
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        validation_data=(x, y),
        callbacks=[tracker],
        verbose=0,
    ).history
    scores = [history[f"val_peer_{j}_accuracy"][-1] for j in range(3)]
    assert model.best_peer.peer == int(np.argmax(scores))
    assert model.deploy_peer == model.best_peer.peer


def test_mean_teachers_are_refused_with_a_clear_error():
    model = make("one")
    with pytest.raises(
        ValueError, match="ONEModel has no mean teachers.*mean_teacher=False"
    ):
        model.get_peer(0, mean_teacher=True)
    tracker = keras_pcl.callbacks.BestPeerTracker(mean_teacher=True)
    model.compile(optimizer="sgd")
    x, y = colour_dataset(16)
    with pytest.raises(ValueError, match="BestPeerTracker\\(mean_teacher=False\\)"):
        model.fit(x, y, epochs=1, callbacks=[tracker], verbose=0)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "dml",
            {"split_at": "split"},
            "no shared trunk; leave `split_at`.*split_at='split'",
        ),
        ("kdcl", {"kd_weight": 2.0}, "kd_weight=2.0"),
        ("one", {"detach_teacher": "yes"}, "detach_teacher='yes'"),
        ("okddip", {"num_peers": 1}, "num_peers=1"),
        ("cl_ilr", {"split_at": "nope"}, "split_at='nope'"),
        ("vanilla", {"num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(name, **kwargs)


def test_shared_view_methods_refuse_a_tuple_of_views():
    x, _ = colour_dataset(4)
    model = make("cl_ilr")
    with pytest.raises(ValueError, match="same view; pass one batch"):
        model((x, x, x), training=True)


def test_get_names_the_known_baselines():
    with pytest.raises(ValueError, match="Did you mean \\['okddip'\\]"):
        baselines.get("okdip")


def test_compile_refuses_a_loss():
    with pytest.raises(ValueError, match="DMLModel computes its own loss"):
        make("dml").compile(optimizer="sgd", loss="mse")
