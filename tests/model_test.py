"""`PeerCollaborativeModel` in the ordinary Keras workflow."""

import json
import os

import keras
import numpy as np
import pytest

import keras_pcl
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def make_model(**kwargs):
    keras.utils.set_random_seed(kwargs.pop("seed", 1))
    args = dict(num_classes=3, num_peers=3, split_at="split", rampup_steps=10)
    args.update(kwargs)
    return keras_pcl.PeerCollaborativeModel(tiny_backbone(), **args)


def sgd(lr=0.05):
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


@pytest.fixture(scope="module")
def trained():
    """A model trained for a few epochs on a small learnable problem."""
    x, y = colour_dataset(384, seed=0)
    x_val, y_val = colour_dataset(96, seed=1)
    model = make_model()
    model.compile(optimizer=sgd())
    history = model.fit(
        x, y, batch_size=32, epochs=4, verbose=0, validation_data=(x_val, y_val)
    )
    return model, history, (x_val, y_val)


def test_learns_a_small_real_problem(trained):
    model, history, (x_val, y_val) = trained
    logs = history.history
    # The total loss also carries w(t) * (distillation), which ramps up and
    # grows while the peers become confident; the supervised part falls.
    assert logs["ce"][-1] < 0.5 * logs["ce"][0]
    assert logs["val_ce"][-1] < logs["val_ce"][0]
    for key in ["peer_0_accuracy", "ensemble_accuracy", "val_mean_teacher_0_accuracy"]:
        assert logs[key][-1] > 0.6, (key, logs[key])  # chance: 1/3
    predictions = model.predict(x_val, verbose=0).argmax(-1)
    assert (predictions == y_val).mean() > 0.6


def test_logs_every_component(trained):
    _, history, _ = trained
    names = ["loss", "ce", "pe", "pm", "consistency_weight", "ensemble_accuracy"]
    names += [f"peer_{j}_accuracy" for j in range(3)]
    names += [f"mean_teacher_{j}_accuracy" for j in range(3)]
    for name in names:
        assert name in history.history, name
        assert "val_" + name in history.history, name


def test_consistency_weight_ramps_up_with_steps(trained):
    _, history, _ = trained
    # 12 steps per epoch, ramp-up over 10 steps: epoch means rise to 1.
    weights = history.history["consistency_weight"]
    steps = np.arange(12)
    first_epoch = np.mean(np.exp(-5 * (1 - np.minimum(steps, 10) / 10) ** 2))
    np.testing.assert_allclose(weights[0], first_epoch, rtol=1e-5)
    np.testing.assert_allclose(weights[-1], 1.0, rtol=1e-6)


def test_evaluate_reports_the_same_accuracies(trained):
    model, history, (x_val, y_val) = trained
    results = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    for j in range(3):
        acc = results[f"mean_teacher_{j}_accuracy"]
        want = model.get_peer(j).predict(x_val, verbose=0).argmax(-1) == y_val
        assert acc == pytest.approx(want.mean(), abs=1e-6)
        student = model.get_peer(j, mean_teacher=False).predict(x_val, verbose=0)
        assert results[f"peer_{j}_accuracy"] == pytest.approx(
            (student.argmax(-1) == y_val).mean(), abs=1e-6
        )
    assert results["val_loss" if "val_loss" in results else "loss"] > 0


def test_get_peer_matches_the_model_prediction(trained):
    model, _, (x_val, _) = trained
    for j in range(3):
        model.deploy_peer = j
        np.testing.assert_allclose(
            model.predict(x_val, verbose=0),
            model.get_peer(j).predict(x_val, verbose=0),
            rtol=1e-5,
            atol=1e-5,
        )
    model.deploy_peer = 0


def test_get_peer_is_the_plain_architecture(trained):
    model, _, (x_val, _) = trained
    peer = model.get_peer(1)
    plain = tiny_backbone()
    # Backbone + a dense classifier on its 6 features: nothing else.
    assert peer.count_params() == plain.count_params() + 6 * 3 + 3
    assert peer.input.shape == (None, 8, 8, 3)
    # Copies, not shared variables: changing the peer leaves the model alone.
    before = model.predict(x_val, verbose=0)
    peer.set_weights([np.zeros_like(w) for w in peer.get_weights()])
    np.testing.assert_array_equal(model.predict(x_val, verbose=0), before)


def test_keras_file_round_trip(trained, tmp_path):
    model, _, (x_val, y_val) = trained
    model.deploy_peer = 2
    path = os.path.join(tmp_path, "pcl.keras")
    model.save(path)
    model.deploy_peer = 0
    loaded = keras.models.load_model(path)
    assert loaded.deploy_peer == 2
    assert int(keras.ops.convert_to_numpy(loaded.step_counter)) == int(
        keras.ops.convert_to_numpy(model.step_counter)
    )
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    model.deploy_peer = 2
    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), model.predict(x_val, verbose=0), 1e-6
    )
    model.deploy_peer = 0
    # The optimizer comes back too, so training resumes where it stopped.
    assert int(loaded.optimizer.iterations.numpy()) == int(
        model.optimizer.iterations.numpy()
    )
    loaded.fit(x_val, y_val, batch_size=32, epochs=1, verbose=0)


def test_config_json_round_trip():
    model = make_model(temperature=4.0, ema_decay=0.99, num_peers=2, deploy_peer=1)
    config = json.loads(json.dumps(model.get_config()))
    clone = keras_pcl.PeerCollaborativeModel.from_config(config)
    for key in [
        "num_classes",
        "num_peers",
        "split_at",
        "temperature",
        "ema_decay",
        "consistency_weight",
        "rampup_steps",
        "deploy_peer",
    ]:
        assert getattr(clone, key) == getattr(model, key), key
    assert clone.count_params() == model.count_params()


def test_peers_start_from_independent_initialisations():
    model = make_model()
    kernels = [
        keras.ops.convert_to_numpy(head.get_layer(f"peer_{j}_head_conv2").kernel)
        for j, head in enumerate(model.peer_heads)
    ]
    classifiers = [keras.ops.convert_to_numpy(c.kernel) for c in model.peer_classifiers]
    for group in (kernels, classifiers):
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                assert not np.allclose(group[a], group[b])


def test_each_peer_gets_its_own_augmentation():
    model = make_model()
    x, _ = colour_dataset(16)
    views = [keras.ops.convert_to_numpy(v) for v in model.peer_views(x)]
    assert len(views) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.allclose(views[a], views[b])
    # Outside training every peer sees the same, merely rescaled, images.
    for v in model.peer_views(x, training=False):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), x / 255.0, 1e-6)


def test_shared_augmentation_ablation_gives_every_peer_the_same_view():
    model = make_model(views_per_peer=False)
    x, _ = colour_dataset(16)
    views = [keras.ops.convert_to_numpy(v) for v in model.peer_views(x)]
    assert not np.allclose(views[0], x / 255.0)  # Augmented...
    for v in views[1:]:
        np.testing.assert_array_equal(v, views[0])  # ...once for all peers.
    clone = keras_pcl.PeerCollaborativeModel.from_config(model.get_config())
    assert not clone.views_per_peer


@pytest.mark.parametrize("shared", [True, False])
def test_configs_saved_with_the_old_name_of_views_per_peer_still_load(shared):
    config = make_model().get_config()
    del config["views_per_peer"]
    config["shared_augmentation"] = shared  # As configs saved it before the rename.
    clone = keras_pcl.PeerCollaborativeModel.from_config(config)
    assert clone.views_per_peer is not shared
    assert clone.views.views_per_peer is not shared


@pytest.mark.parametrize(
    "ablation, kept",
    [
        ({}, ("pe", "pm")),
        ({"distill_from_ensemble": False}, ("pm",)),
        ({"distill_from_mean_teachers": False}, ("pe",)),
    ],
)
def test_ablations_leave_their_term_out_of_the_trained_loss(ablation, kept):
    # w(t) = 1 from the first step (rampup_steps=0), no regularizers: the
    # logged means satisfy loss = ce + the kept distillation terms.
    model = make_model(rampup_steps=0, **ablation)
    model.compile(optimizer=sgd())
    x, y = colour_dataset(64)
    logs = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    want = logs["ce"][0] + sum(logs[k][0] for k in kept)
    np.testing.assert_allclose(logs["loss"][0], want, rtol=1e-4)
    assert logs["pe"][0] > 0 and logs["pm"][0] > 0  # Still reported.


@pytest.mark.parametrize("distill", [True, False])
def test_without_the_ensemble_teacher_its_loss_does_not_reach_the_peers(
    distill, monkeypatch
):
    # Train on the ensemble's cross-entropy alone: with the ensemble teacher
    # it moves the peers; without it (a probe on detached features) only
    # the ensemble classifier moves.
    def ensemble_ce_only(y, peer_logits, ensemble_logits, *args, **kwargs):
        ce = keras_pcl.losses.cross_entropy(y, ensemble_logits)
        return {"loss": ce, "ce": ce, "pe": ce * 0.0, "pm": ce * 0.0}

    monkeypatch.setattr(keras_pcl.model, "pcl_loss", ensemble_ce_only)
    model = make_model(distill_from_ensemble=distill, augmentation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    student = [model.trunk, *model.peer_heads, *model.peer_classifiers]
    before = [
        keras.ops.convert_to_numpy(w) for l in student for w in l.trainable_weights
    ]
    ensemble_before = keras.ops.convert_to_numpy(model.ensemble_classifier.kernel)
    x, y = colour_dataset(16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = [
        keras.ops.convert_to_numpy(w) for l in student for w in l.trainable_weights
    ]
    moved = max(np.abs(a - b).max() for a, b in zip(after, before))
    assert (moved > 1e-6) == distill
    ensemble_after = keras.ops.convert_to_numpy(model.ensemble_classifier.kernel)
    assert np.abs(ensemble_after - ensemble_before).max() > 1e-6
    with pytest.raises(ValueError, match="distill_from_ensemble='no'"):
        make_model(distill_from_ensemble="no")


def test_views_from_the_input_pipeline_are_used_as_given():
    model = make_model()
    x, y = colour_dataset(32)
    views = (x, x[:, ::-1], x[:, :, ::-1])
    out = model.peer_views(views)
    for given, got in zip(views, out):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), given / 255.0, 1e-6)
    model.compile(optimizer=sgd())
    history = model.fit(views, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_one_hot_labels_train_like_integer_labels():
    x, y = colour_dataset(32)
    losses = []
    for labels in (y, np.eye(3, dtype="float32")[y]):
        model = make_model(augmentation=None, seed=4)
        model.compile(optimizer=sgd())
        history = model.fit(
            x, labels, batch_size=16, epochs=1, verbose=0, shuffle=False
        )
        losses.append(history.history["loss"][-1])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_terminate_on_nan_stops_a_non_finite_run():
    x, y = colour_dataset(64)
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(1e30))  # overflows float32
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    assert model.stop_training
    assert len(history.history["loss"]) == 1
    assert not np.isfinite(history.history["loss"][0])


def test_custom_preprocessing_is_part_of_the_deployed_network():
    mean, variance = [120.0, 110.0, 100.0], [4000.0, 3900.0, 3800.0]
    model = make_model(
        preprocessing=keras.layers.Normalization(mean=mean, variance=variance)
    )
    x, _ = colour_dataset(8)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.peer_views(x, training=False)[0]),
        (x - np.array(mean)) / np.sqrt(variance),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        model.get_peer(0).predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_peers=1), "num_peers=1"),
        (dict(num_classes=1), "num_classes=1"),
        (dict(num_classes=2.5), "num_classes=2.5"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(temperature=-1), "temperature=-1"),
        (dict(ema_decay=1.0), r"ema_decay=1.0"),
        (dict(ema_decay=-0.1), r"ema_decay=-0.1"),
        (dict(consistency_weight=-1.0), "consistency_weight=-1.0"),
        (dict(rampup_steps=-5), "rampup_steps=-5"),
        (dict(deploy_peer=3), "deploy_peer=3"),
        (dict(split_at="splt"), r"Close matches: \['split'\].*split_at='splt'"),
        (dict(split_at="pool"), "nothing for the peers"),
        (dict(split_at="images"), "input layer"),
        (dict(split_at=None), "split_at=None"),
        (dict(preprocessing=lambda x: x), "preprocessing="),
        (dict(augmentation="strong"), "augmentation='strong'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_backbone_must_be_a_built_functional_model():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    for bad in (Subclassed(), "resnet32", keras.layers.Dense(3)):
        with pytest.raises(ValueError, match="backbone"):
            keras_pcl.PeerCollaborativeModel(bad, num_classes=3, split_at="x")


def test_backbone_must_end_in_features():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    backbone = keras.Model(inputs, x)
    with pytest.raises(ValueError, match="pooled feature vector"):
        keras_pcl.PeerCollaborativeModel(backbone, num_classes=3, split_at="conv")


def test_wrong_number_of_views_raises():
    model = make_model()
    x, _ = colour_dataset(4)
    with pytest.raises(ValueError, match="holds 2 views.*num_peers=3"):
        model.peer_views((x, x))


def test_images_of_the_wrong_shape_raise():
    model = make_model()
    with pytest.raises(ValueError, match=r"x.shape=\(2, 16, 16, 3\)"):
        model.predict(np.zeros((2, 16, 16, 3), "uint8"), verbose=0)


def test_labels_of_the_wrong_rank_raise():
    model = make_model()
    model.compile(optimizer=sgd())
    x, _ = colour_dataset(8)
    with pytest.raises(ValueError, match="y.shape"):
        model.fit(x, np.zeros((8, 2, 2)), batch_size=8, verbose=0)


@pytest.mark.parametrize(
    "call, bad, message",
    [
        ("fit", [0, 1, 3, 2], r"`y` must hold integer class ids in \[0, 3\).*y\[2\]=3"),
        ("fit", [0, -1, 1, 2], r"y\[1\]=-1 \(1 of 4 labels"),
        ("fit_validation", [0, 1, 2, 7], r"validation_data\[1\]\[3\]=7"),
        ("evaluate", [[0], [5], [1], [2]], r"y\[1\]=5"),
        ("train_on_batch", [0.0, 1.5, 2.0, 1.0], r"y\[1\]=1.5"),
        ("test_on_batch", [0, 1, 2, 3], r"y\[3\]=3"),
    ],
)
def test_out_of_range_labels_raise_before_training(call, bad, message):
    model = make_model()
    model.compile(optimizer=sgd())
    x, y = colour_dataset(4)
    before = model.get_weights()
    bad = np.array(bad)
    with pytest.raises(ValueError, match=message):
        if call == "fit":
            model.fit(x, bad, batch_size=4, verbose=0)
        elif call == "fit_validation":
            model.fit(x, y, validation_data=(x, bad), batch_size=4, verbose=0)
        else:
            getattr(model, call)(x, bad, **({} if "batch" in call else {"verbose": 0}))
    for got, want in zip(model.get_weights(), before):  # raised before a step
        np.testing.assert_array_equal(got, want)


def test_labels_as_a_backend_tensor_are_checked():
    model = make_model()
    model.compile(optimizer=sgd())
    x, _ = colour_dataset(4)
    y = keras.ops.convert_to_tensor(np.array([0, 1, 2, 9]))
    with pytest.raises(ValueError, match=r"y\[3\]=9"):
        model.fit(x, y, batch_size=4, verbose=0)


def test_compile_refuses_a_loss():
    model = make_model()
    with pytest.raises(ValueError, match="loss='mse'"):
        model.compile(optimizer="sgd", loss="mse")


def test_sample_weights_are_refused():
    model = make_model()
    model.compile(optimizer=sgd())
    x, y = colour_dataset(8)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(x, y, sample_weight=np.ones(8), batch_size=8, verbose=0)


def test_deploy_peer_out_of_range_raises():
    model = make_model()
    with pytest.raises(ValueError, match="deploy_peer=5"):
        model.deploy_peer = 5
    with pytest.raises(ValueError, match="index=-1"):
        model.get_peer(-1)


def test_each_update_depends_only_on_the_current_state():
    """Step k from a snapshot of the state equals step k of a longer run.

    Catches state that leaks between steps outside the model's variables,
    e.g. gradients that pile up because `zero_grad` missed a variable.
    """
    x, y = colour_dataset(32)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    run = make_model(augmentation=None)
    run.compile(optimizer=keras.optimizers.SGD(0.1))
    run.fit(*batches[0], batch_size=16, verbose=0)
    snapshot = run.get_weights()
    run.fit(*batches[1], batch_size=16, verbose=0)

    fresh = make_model(augmentation=None, seed=99)
    fresh.set_weights(snapshot)
    fresh.compile(optimizer=keras.optimizers.SGD(0.1))
    fresh.fit(*batches[1], batch_size=16, verbose=0)
    for a, b, v in zip(run.get_weights(), fresh.get_weights(), run.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_variable_paths_are_unique():
    model = make_model()
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))


def test_nested_blocks_with_repeated_layer_names_train_correctly():
    """Two nested blocks whose inner layers share names repeat variable paths
    (`conv/kernel` twice); every weight must still get only its own
    gradient of the current step."""

    def block(name):
        inputs = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        return keras.Model(inputs, keras.layers.ReLU(name="relu")(x), name=name)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU(name="split")(x)
    x = block("block_a")(x)
    x = block("block_b")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, outputs)

    def build(seed):
        keras.utils.set_random_seed(seed)
        model = keras_pcl.PeerCollaborativeModel(
            backbone,
            num_classes=3,
            num_peers=2,
            split_at="split",
            augmentation=None,
            rampup_steps=0,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    x, y = colour_dataset(32)
    run = build(0)
    run.fit(x[:16], y[:16], batch_size=16, verbose=0)
    snapshot = run.get_weights()
    run.fit(x[16:], y[16:], batch_size=16, verbose=0)
    fresh = build(1)
    fresh.set_weights(snapshot)
    fresh.fit(x[16:], y[16:], batch_size=16, verbose=0)
    for a, b in zip(run.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_saved_weights_continue_the_exact_augmentation_sequence(tmp_path):
    """Weights files carry the augmentation RNG state: a reload continues exactly."""
    x, y = colour_dataset(32, seed=0)

    def make():
        model = make_model(seed=0)
        model.compile(optimizer=sgd())
        return model

    original = make()
    original.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    original.save_weights(tmp_path / "backup.weights.h5")
    original.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    resumed = make()
    resumed.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)  # other state
    resumed.load_weights(tmp_path / "backup.weights.h5")
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert original._random_states(), "the default augmentation draws random numbers"
    for variable, a, b in zip(
        original.weights, original.get_weights(), resumed.get_weights()
    ):
        np.testing.assert_array_equal(a, b, err_msg=variable.path)


def test_compiled_metrics_score_the_deployed_network():
    x, y = colour_dataset(64, seed=0)
    x_val, y_val = colour_dataset(48, seed=1)
    model = make_model(deploy_peer=1)
    model.compile(
        optimizer=sgd(),
        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")],
    )
    history = model.fit(
        x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x_val, y_val)
    )
    assert "top2" in history.history and "val_top2" in history.history
    results = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    # Independent: top-2 of the deployed network (mean teacher of peer 1),
    # computed from its standalone copy with NumPy.
    logits = model.get_peer(1).predict(x_val, verbose=0)
    top2 = np.argsort(-logits, axis=-1)[:, :2]
    want = np.mean([label in row for label, row in zip(y_val, top2)])
    assert results["top2"] == pytest.approx(want, abs=1e-6)
    # A new deploy_peer is what the metrics score next.
    model.deploy_peer = 2
    logits = model.get_peer(2).predict(x_val, verbose=0)
    top2 = np.argsort(-logits, axis=-1)[:, :2]
    want = np.mean([label in row for label, row in zip(y_val, top2)])
    results = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    assert results["top2"] == pytest.approx(want, abs=1e-6)


def test_evaluate_runs_the_deployed_network_once_per_batch(monkeypatch):
    x, y = colour_dataset(16, seed=0)
    model = make_model()
    model.compile(optimizer=sgd(), run_eagerly=True)  # Python runs per batch.
    calls = {"trunk": 0, "head": 0}
    trunk_call = model.mean_teacher_trunk.call
    head_call = model.mean_teacher_heads[0].call

    def count(key, call):
        def counted(*args, **kwargs):
            calls[key] += 1
            return call(*args, **kwargs)

        return counted

    monkeypatch.setattr(model.mean_teacher_trunk, "call", count("trunk", trunk_call))
    monkeypatch.setattr(model.mean_teacher_heads[0], "call", count("head", head_call))
    model.evaluate(x, y, batch_size=16, verbose=0)
    # One batch: the mean-teacher trunk and the deployed head run once each,
    # shared by `call` (the deployed network) and every branch's outputs.
    assert calls == {"trunk": 1, "head": 1}


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="Grappler's options exist on TensorFlow only",
)
def test_training_leaves_tensorflow_optimizer_options_as_they_were(monkeypatch):
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    x, y = colour_dataset(32, seed=0)
    model = make_model()
    model.compile(optimizer=sgd(), jit_compile=False)
    seen = []
    compute_loss = model.compute_loss

    def recording(*args, **kwargs):  # Runs while the step is traced.
        seen.append(tf.config.optimizer.get_experimental_options())
        return compute_loss(*args, **kwargs)

    monkeypatch.setattr(model, "compute_loss", recording)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # The training step was traced (and so is run) with the pass off ...
    assert seen and all(o["dependency_optimization"] is False for o in seen)
    after = tf.config.optimizer.get_experimental_options()
    assert after.get("dependency_optimization", True) == before.get(
        "dependency_optimization", True
    )
