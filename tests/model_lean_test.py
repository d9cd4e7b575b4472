"""`pcl_lean`: PCL without the mean teachers' forward passes in training.

With `distill_from_mean_teachers=False` no loss term reads the mean
teachers' logits; with `mean_teacher_statistics="ema"` their batch-norm
statistics are averaged from the students, so training skips their forward
passes. The trajectory must be exactly the ablation's
(`pcl_no_mean_teachers`): the same losses, students and averaged weights.
"""

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import methods
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


def make_model(**kwargs):
    keras.utils.set_random_seed(1)
    args = dict(num_classes=3, num_peers=3, split_at="split", rampup_steps=4)
    args.update(kwargs)
    return keras_pcl.PeerCollaborativeModel(tiny_backbone(), **args)


def train(model, epochs=1, validation=False):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True))
    x, y = colour_dataset(48, seed=0)
    val = colour_dataset(24, seed=1) if validation else None
    return model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        validation_data=val,
    ).history


def values(layers):
    return [np.asarray(w) for layer in layers for w in layer.get_weights()]


def test_the_skip_changes_no_loss_student_or_averaged_weight():
    ablation = make_model(distill_from_mean_teachers=False, ema_decay=0.5)
    lean = make_model(
        distill_from_mean_teachers=False,
        mean_teacher_statistics="ema",
        ema_decay=0.5,
    )
    assert lean.skips_mean_teacher_passes
    assert not ablation.skips_mean_teacher_passes
    full, skipped = train(ablation), train(lean)
    # Equal, not close: the skipped passes feed nothing the step computes.
    for key in ("loss", "ce", "pe", "peer_0_accuracy", "ensemble_accuracy"):
        np.testing.assert_array_equal(full[key], skipped[key], err_msg=key)
    for a, b in zip(values(ablation._students()), values(lean._students())):
        np.testing.assert_array_equal(a, b)
    # The averaged weights of every mean teacher (the ablation averages the
    # trainable ones; the lean model its statistics as well).
    averaged = {v.path: np.asarray(v) for v in lean._ema_pairs[1]}
    assert len(averaged) > len(ablation._ema_pairs[1])
    for variable in ablation._ema_pairs[1]:
        np.testing.assert_array_equal(
            np.asarray(variable), averaged[variable.path], err_msg=variable.path
        )


def test_mean_teacher_statistics_are_the_students_average():
    # ema_decay=0: at the start of each step the mean teacher takes its
    # student's values, statistics included; nothing else writes them.
    model = make_model(
        distill_from_mean_teachers=False, mean_teacher_statistics="ema", ema_decay=0.0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x, y = colour_dataset(16, seed=0)
    model.train_on_batch(x, y)
    before_last_step = values(model._students())
    model.train_on_batch(x, y)
    names = [v.name for layer in model._mean_teachers() for v in layer.weights]
    assert "moving_mean" in names and "moving_variance" in names
    for student, teacher in zip(before_last_step, values(model._mean_teachers())):
        np.testing.assert_array_equal(student, teacher)


def test_skipped_terms_are_reported_for_validation_only():
    model = make_model(distill_from_mean_teachers=False, mean_teacher_statistics="ema")
    logs = train(model, epochs=1, validation=True)
    for name in ("pm", "mean_teacher_0_accuracy", "mean_teacher_2_accuracy"):
        assert name not in logs  # Not computed in training: not reported.
        assert f"val_{name}" in logs
    assert {"loss", "ce", "pe", "peer_0_accuracy", "ensemble_accuracy"} <= set(logs)
    # Validation scores each mean teacher as the network it deploys.
    x_val, y_val = colour_dataset(24, seed=1)
    for j in range(3):
        logits = model.get_peer(j).predict(x_val, verbose=0)
        accuracy = np.mean(np.argmax(logits, axis=-1) == y_val)
        np.testing.assert_allclose(
            # float32 mean of 24 hits against float64: rounding only.
            logs[f"val_mean_teacher_{j}_accuracy"][0],
            accuracy,
            atol=1e-6,
        )


def test_the_method_name_and_config():
    model = methods.build_method(
        "pcl_lean", tiny_backbone(), 3, split_at="split", augmentation=None
    )
    assert model.skips_mean_teacher_passes
    config = model.get_config()
    assert config["mean_teacher_statistics"] == "ema"
    rebuilt = keras_pcl.PeerCollaborativeModel.from_config(config)
    assert rebuilt.skips_mean_teacher_passes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mean_teacher_statistics="ema"), "distill_from_mean_teachers=False"),
        (dict(mean_teacher_statistics="own"), "mean_teacher_statistics='own'"),
    ],
)
def test_bad_statistics_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_compiled_metrics_of_the_skipped_teacher_are_validation_only():
    model = make_model(distill_from_mean_teachers=False, mean_teacher_statistics="ema")
    top2 = keras.metrics.SparseTopKCategoricalAccuracy(2, name="top2")
    model.compile(optimizer="sgd", metrics=[top2])
    x, y = colour_dataset(32, seed=0)
    logs = model.fit(
        x, y, batch_size=16, epochs=1, verbose=0, validation_data=colour_dataset(16)
    ).history
    assert "top2" not in logs and "val_top2" in logs
