"""`keras_pcl.losses` against an independent NumPy transcription of the spec."""

import keras
import numpy as np
import pytest

from keras_pcl import losses
from tests.testing import gradients

# ---------------------------------------------------------------------------
# NumPy reference: spec sections 2 and 3, written from the equations.
# ---------------------------------------------------------------------------


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_ce(y_onehot, z):
    return float(np.mean(-(y_onehot * np_log_softmax(z)).sum(axis=-1)))


def np_kd(z, t, T):
    log_p = np_log_softmax(t / T)
    log_q = np_log_softmax(z / T)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return float(T * T * kl.mean())


def np_pcl(y_onehot, peers, ensemble, mean_teachers, T, w):
    m = len(peers)
    ce = sum(np_ce(y_onehot, z) for z in peers) + np_ce(y_onehot, ensemble)
    pe = sum(np_kd(z, ensemble, T) for z in peers)
    pm = sum(
        sum(np_kd(peers[j], mean_teachers[l], T) for l in range(m) if l != j)
        / (m - 1)
        for j in range(m)
    )
    return {"loss": ce + w * (pe + pm), "ce": ce, "pe": pe, "pm": pm}


def random_case(m, batch=6, classes=5, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=batch)
    peers = [rng.normal(size=(batch, classes)) * scale for _ in range(m)]
    ensemble = rng.normal(size=(batch, classes)) * scale
    teachers = [rng.normal(size=(batch, classes)) * scale for _ in range(m)]
    f32 = lambda a: a.astype("float32")  # noqa: E731
    return (
        labels,
        [f32(p) for p in peers],
        f32(ensemble),
        [f32(t) for t in teachers],
    )


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.5])
@pytest.mark.parametrize("one_hot", [False, True])
def test_pcl_loss_matches_numpy(m, temperature, one_hot):
    labels, peers, ensemble, teachers = random_case(m, seed=m)
    onehot = np.eye(5, dtype="float32")[labels]
    weight = 0.37
    y = onehot if one_hot else labels
    got = losses.pcl_loss(
        y, peers, ensemble, teachers, temperature, consistency_weight=weight
    )
    want = np_pcl(onehot, peers, ensemble, teachers, temperature, weight)
    assert sorted(got) == ["ce", "loss", "pe", "pm"]
    for key in want:
        np.testing.assert_allclose(
            float(got[key]), want[key], rtol=1e-5, atol=1e-5, err_msg=key
        )


def test_labels_of_shape_batch_by_one_are_class_ids():
    labels, peers, ensemble, teachers = random_case(3)
    flat = losses.pcl_loss(labels, peers, ensemble, teachers)
    column = losses.pcl_loss(labels[:, None], peers, ensemble, teachers)
    np.testing.assert_allclose(float(flat["loss"]), float(column["loss"]), 1e-6)


def test_distillation_is_exact_for_confident_logits():
    # Logits of scale 30 at T=3 put probabilities far below 1e-7, where a
    # probability-clipping KL divergence goes wrong.
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(8, 10)) * 30).astype("float32")
    t = (rng.normal(size=(8, 10)) * 30).astype("float32")
    got = float(losses.distillation_loss(z, t, 3.0))
    np.testing.assert_allclose(got, np_kd(z, t, 3.0), rtol=1e-5)


def test_distillation_of_identical_logits_is_zero():
    z = np.random.default_rng(2).normal(size=(4, 7)).astype("float32")
    assert abs(float(losses.distillation_loss(z, z, 3.0))) < 1e-6


def test_gradients_flow_only_where_the_spec_says():
    m, batch, classes, T, w = 3, 4, 5, 3.0, 0.8
    labels, peers, ensemble, teachers = random_case(m, batch, classes, seed=7)

    def total(*tensors):
        p, e, t = list(tensors[:m]), tensors[m], list(tensors[m + 1 :])
        return losses.pcl_loss(labels, p, e, t, T, consistency_weight=w)["loss"]

    grads = gradients(total, peers + [ensemble] + teachers)
    peer_grads, ensemble_grad, teacher_grads = grads[:m], grads[m], grads[m + 1 :]

    # Mean-teacher logits: no gradient at all.
    for g in teacher_grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))

    # Ensemble logits: exactly the gradient of their own cross-entropy,
    # (softmax(z_e) - y) / B, i.e. nothing from the distillation terms.
    onehot = np.eye(classes)[labels]
    softmax = np.exp(np_log_softmax(ensemble.astype("float64")))
    np.testing.assert_allclose(
        ensemble_grad, (softmax - onehot) / batch, rtol=1e-5, atol=1e-6
    )

    # Peers: CE + w * (KD from the ensemble + mean of KD from the other mean
    # teachers). d KD_T(z, t)/dz = T * (softmax(z/T) - softmax(t/T)) / B.
    def kd_grad(z, t):
        q = np.exp(np_log_softmax(z / T))
        p = np.exp(np_log_softmax(t / T))
        return T * (q - p) / batch

    for j in range(m):
        z = peers[j].astype("float64")
        want = (np.exp(np_log_softmax(z)) - onehot) / batch
        want = want + w * kd_grad(z, ensemble)
        want = want + w * sum(
            kd_grad(z, teachers[l]) for l in range(m) if l != j
        ) / (m - 1)
        np.testing.assert_allclose(peer_grads[j], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("step", [0, 1, 17, 40, 80, 200])
def test_consistency_rampup_matches_formula(step):
    t_r, lam = 80, 1.5
    want = lam * np.exp(-5.0 * (1.0 - min(step, t_r) / t_r) ** 2)
    got = float(losses.consistency_rampup(step, t_r, lam))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_consistency_rampup_of_length_zero_is_the_full_weight():
    assert float(losses.consistency_rampup(0, 0, 0.7)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "tail", [(2, 2), (6,), (3,)], ids=["rank3", "too_many", "too_few"]
)
def test_labels_of_the_wrong_shape_raise(tail):
    _, peers, ensemble, teachers = random_case(2)  # batch 6, 5 classes
    y = np.zeros((6,) + tail, dtype="float32")
    with pytest.raises(ValueError, match=r"Labels `y`.*Received: y.shape"):
        losses.pcl_loss(y, peers, ensemble, teachers)


def test_bad_arguments_raise():
    labels, peers, ensemble, teachers = random_case(2)
    with pytest.raises(ValueError, match="temperature=0"):
        losses.pcl_loss(labels, peers, ensemble, teachers, temperature=0)
    with pytest.raises(ValueError, match="at least 2 peers"):
        losses.pcl_loss(labels, peers[:1], ensemble, teachers[:1])
    with pytest.raises(ValueError, match="one tensor per peer"):
        losses.pcl_loss(labels, peers, ensemble, teachers[:1])
    with pytest.raises(ValueError, match="rampup_steps=-1"):
        losses.consistency_rampup(0, -1)


def test_loss_is_float32_for_float16_logits():
    labels, peers, ensemble, teachers = random_case(2)
    half = lambda a: keras.ops.cast(a, "float16")  # noqa: E731
    out = losses.pcl_loss(
        labels, [half(p) for p in peers], half(ensemble), [half(t) for t in teachers]
    )
    assert keras.backend.standardize_dtype(out["loss"].dtype) == "float32"
