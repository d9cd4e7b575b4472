"""Mean teachers follow spec section 4 during a real `fit`."""

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import mean_teacher
from tests.testing import colour_dataset
from tests.testing import tiny_backbone
from tests.testing import weights_of

EMA_DECAY = 0.6  # small, so that the warm-up and the cap both occur
STEPS = 8
BATCH = 8


def test_ema_decay_warm_up_and_cap():
    got = [float(mean_teacher.ema_decay_at(k, 0.999)) for k in range(5)]
    np.testing.assert_allclose(got, [0.0, 0.5, 2 / 3, 0.75, 0.8], rtol=1e-6)
    assert float(mean_teacher.ema_decay_at(10**6, 0.999)) == pytest.approx(0.999)


def test_update_mean_teacher_formula():
    student = keras.Variable(np.array([1.0, 2.0], "float32"))
    teacher = keras.Variable(np.array([3.0, -1.0], "float32"), trainable=False)
    mean_teacher.update_mean_teacher([student], [teacher], step=3, ema_decay=0.9)
    alpha = 0.75  # min(1 - 1/4, 0.9)
    want = alpha * np.array([3.0, -1.0]) + (1 - alpha) * np.array([1.0, 2.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(teacher), want, 1e-6)


def make_model(seed=3):
    keras.utils.set_random_seed(seed)
    return keras_pcl.PeerCollaborativeModel(
        tiny_backbone(),
        num_classes=3,
        split_at="split",
        num_peers=2,
        augmentation=None,
        ema_decay=EMA_DECAY,
        rampup_steps=4,
    )


def pairs(model):
    """(student, mean teacher) sub-networks, in matching order."""
    students = [model.trunk, *model.peer_heads, *model.peer_classifiers]
    teachers = [
        model.mean_teacher_trunk,
        *model.mean_teacher_heads,
        *model.mean_teacher_classifiers,
    ]
    return list(zip(students, teachers))


def trainable_mask(model):
    return [[v.trainable for v in student.weights] for student, _ in pairs(model)]


class RecordStudentWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_batch_begin(self, batch, logs=None):
        self.history.append([weights_of(student) for student, _ in pairs(self.model)])


def expected_mean_teacher(history, decay):
    """theta'_k = alpha_k theta'_{k-1} + (1 - alpha_k) theta_k, theta'_0 = theta_0."""
    teacher = None
    for k, theta in enumerate(history):
        alpha = min(1.0 - 1.0 / (k + 1), decay)
        if teacher is None:
            teacher = [[w.astype("float64") for w in part] for part in theta]
            continue
        teacher = [
            [alpha * t + (1 - alpha) * w for t, w in zip(tp, wp)]
            for tp, wp in zip(teacher, theta)
        ]
    return teacher


def assert_mean_teachers_equal(model, expected, mask, rtol=2e-5, atol=2e-6):
    for (_, teacher), want_part, mask_part in zip(pairs(model), expected, mask):
        got_part = weights_of(teacher)
        for got, want, trained in zip(got_part, want_part, mask_part):
            if trained:  # moving statistics are the teacher's own
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


JIT_SETTINGS = [False] if keras.backend.backend() == "torch" else [False, True]
_runs = {}


def recorded_run(jit_compile):
    """A fit with steps_per_execution=1 that records theta_k at every step.

    torch: Keras' torch trainer supports neither `jit_compile=True` (here)
    nor `steps_per_execution > 1`, so only the eager run exists there.
    """
    if jit_compile not in _runs:
        x, y = colour_dataset(STEPS * BATCH)
        model = make_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.02, momentum=0.9),
            jit_compile=jit_compile,
        )
        initial = model.get_weights()
        recorder = RecordStudentWeights()
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[recorder],
        )
        assert len(recorder.history) == STEPS
        expected = expected_mean_teacher(recorder.history, EMA_DECAY)
        _runs[jit_compile] = (x, y, initial, expected, model)
    return _runs[jit_compile]


@pytest.mark.parametrize("jit_compile", JIT_SETTINGS)
def test_mean_teacher_trajectory_follows_spec(jit_compile):
    _, _, _, expected, model = recorded_run(jit_compile)
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == STEPS
    assert_mean_teachers_equal(model, expected, trainable_mask(model))


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras' torch trainer requires steps_per_execution=1",
)
@pytest.mark.parametrize("jit_compile", JIT_SETTINGS)
def test_same_trajectory_with_steps_per_execution(jit_compile):
    # Same compiled step, looped 4 times per call: the callback sees only
    # every 4th step, so compare with the recorded run of the same setting.
    x, y, initial, expected, _ = recorded_run(jit_compile)
    model = make_model()
    model.set_weights(initial)
    model.compile(
        optimizer=keras.optimizers.SGD(0.02, momentum=0.9),
        jit_compile=jit_compile,
        steps_per_execution=4,
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == STEPS
    # Two runs: TensorFlow may order float reductions differently inside the
    # step loop (differences ~5e-6 after 8 steps); one step of a wrong EMA
    # moves the teacher by ~1e-3.
    assert_mean_teachers_equal(
        model, expected, trainable_mask(model), rtol=1e-4, atol=1e-5
    )


def test_mean_teacher_batch_norm_keeps_its_own_statistics():
    """Project choice: moving statistics come from the teacher's own passes.

    At step 0 the teacher equals the student, so after one step (two peers,
    no augmentation: the trunk sees the same batch twice) the trunk's BN
    moving mean is (1 - 0.99**2) * batch mean of conv1's output, for the
    student and for the mean teacher alike.
    """
    x, y = colour_dataset(BATCH)
    model = make_model()
    conv = model.trunk.get_layer("conv1")
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    images = x.astype("float64") / 255.0
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(images.shape[:3] + (kernel.shape[-1],))
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, dy : dy + 8, dx : dx + 8, :]
            out += patch @ kernel[dy, dx]
    batch_mean = out.mean(axis=(0, 1, 2))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    want = (1 - 0.99**2) * batch_mean
    for bn in (
        model.trunk.get_layer("bn1"),
        model.mean_teacher_trunk.get_layer("mean_teacher_trunk_bn1"),
    ):
        got = keras.ops.convert_to_numpy(bn.moving_mean)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mean_teachers_are_not_trained_but_normalise_with_batch_statistics():
    model = make_model()
    trainable = {id(v) for v in model.trainable_variables}
    for _, teacher in pairs(model):
        assert teacher.trainable  # layers stay trainable: BN uses batch stats
        for v in teacher.weights:
            assert id(v) not in trainable
    model.trainable = True  # toggling the whole model keeps them frozen
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(
        id(v) in trainable for _, teacher in pairs(model) for v in teacher.weights
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mean_teacher_update_is_float32_under_mixed_precision(policy):
    """The EMA of one step equals a float64 EMA to float32 rounding.

    Before the fix the update ran inside the model's autocast scope, i.e. in
    float16 (or bfloat16): `1 - 0.999` and every teacher weight rounded to
    11 (8) significant bits. The last assertion checks that such an update
    would fail this test's tolerance.
    """
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        x, y = colour_dataset(BATCH)
        model = keras_pcl.PeerCollaborativeModel(
            tiny_backbone(),
            num_classes=3,
            split_at="split",
            num_peers=2,
            augmentation=None,
            ema_decay=0.999,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.02))
        model.step_counter.assign(10**6)  # alpha_k = min(1 - 1e-6, 0.999)
        rng = np.random.default_rng(0)
        for (_, teacher), trained in zip(pairs(model), trainable_mask(model)):
            teacher.set_weights(
                [
                    w + rng.normal(0, 0.1, w.shape).astype(w.dtype) if t else w
                    for w, t in zip(weights_of(teacher), trained)
                ]
            )
        students = [weights_of(s) for s, _ in pairs(model)]
        teachers = [weights_of(t) for _, t in pairs(model)]
        mask = trainable_mask(model)
        model.train_on_batch(x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    low = np.float16 if policy == "mixed_float16" else None
    low_precision_would_pass = True
    for (_, teacher), s_part, t_part, m_part in zip(
        pairs(model), students, teachers, mask
    ):
        for got, s, t, trained in zip(weights_of(teacher), s_part, t_part, m_part):
            if not trained:  # moving statistics are the teacher's own
                continue
            want = 0.999 * t.astype("float64") + 0.001 * s.astype("float64")
            # float32 `a * t + (1 - a) * s`: alpha, 1 - alpha, the two
            # products and the sum each round by <= 1/2 ulp of at most
            # max(|t|, |s|); 4 ulps of that magnitude bound the total.
            atol = 4 * np.finfo("float32").eps * np.maximum(abs(t), abs(s))
            np.testing.assert_array_less(abs(got - want), atol + 1e-30)
            if low is not None:
                a = low(0.999)
                emulated = a * t.astype(low) + (low(1) - a) * s.astype(low)
                low_precision_would_pass &= bool(
                    np.all(abs(emulated.astype("float64") - want) < atol + 1e-30)
                )
    if low is not None:
        assert not low_precision_would_pass
