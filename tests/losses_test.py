"""`keras_pcl.losses` against an independent NumPy transcription of the spec."""

import keras
import numpy as np
import pytest

from keras_pcl import losses
from tests.testing import EPS32
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
        sum(np_kd(peers[j], mean_teachers[l], T) for l in range(m) if l != j) / (m - 1)
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
        want = want + w * sum(kd_grad(z, teachers[l]) for l in range(m) if l != j) / (
            m - 1
        )
        np.testing.assert_allclose(peer_grads[j], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("step", [0, 1, 17, 40, 80, 200])
def test_consistency_rampup_matches_formula(step):
    t_r, lam = 80, 1.5
    exponent = -5.0 * (1.0 - min(step, t_r) / t_r) ** 2
    want = lam * np.exp(exponent)
    got = float(losses.consistency_rampup(step, t_r, lam))
    # float32 elementwise: the exponent is off by a few ulps of itself, which
    # exp turns into |exponent| times that relative error of the weight (up
    # to 5x at step 0), plus an ulp or two from exp and the scaling:
    # rtol = 4 ulps x (1 + |exponent|), 2.9e-6 at step 0 (the old 1e-6 was
    # below that bound; 1.7 ulps seen). A wrong formula is off by > 1e-2.
    np.testing.assert_allclose(got, want, rtol=4 * EPS32 * (1 + abs(exponent)), atol=0)


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


# ---------------------------------------------------------------------------
# The baselines' losses (spec section 9).
#
# The baselines' losses (spec section 9) against independent NumPy code.
#
# The references below are written from the equations of spec section 9, not
# from `keras_pcl.losses`; the gradient tests check which inputs a teacher's
# stop-gradient cuts off, with the `detach_teacher` option on and off.
# ---------------------------------------------------------------------------


def np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def case(m, batch=6, classes=5, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=batch)
    logits = [
        (rng.normal(size=(batch, classes)) * scale).astype("float32") for _ in range(m)
    ]
    return labels, np.eye(classes, dtype="float32")[labels], logits


def np_dml(y, z, T):
    m = len(z)
    ce = sum(np_ce(y, zj) for zj in z)
    kd = sum(
        sum(np_kd(z[j], z[k], T) for k in range(m) if k != j) / (m - 1)
        for j in range(m)
    )
    return {"loss": ce + kd, "ce": ce, "kd": kd}


def np_one(y, z, zt, T, w):
    ce = sum(np_ce(y, zi) for zi in z) + np_ce(y, zt)
    kd = sum(np_kd(zi, zt, T) for zi in z)
    return {"loss": ce + w * kd, "ce": ce, "kd": kd}


def np_cl_ilr(y, z, T, w):
    m = len(z)
    ce = sum(np_ce(y, zi) for zi in z)
    kd = sum(
        np_kd(z[i], sum(z[k] for k in range(m) if k != i) / (m - 1), T)
        for i in range(m)
    )
    return {"loss": ce + w * kd, "ce": ce, "kd": kd}


def np_okddip(y, peers, leader, attention, T, w):
    # t_j[b] = sum_k a[b, j, k] z_k[b], one loop per example.
    batch = peers[0].shape[0]
    targets = [
        np.stack(
            [
                sum(attention[b, j, k] * peers[k][b] for k in range(len(peers)))
                for b in range(batch)
            ]
        )
        for j in range(len(peers))
    ]
    ce = sum(np_ce(y, z) for z in peers) + np_ce(y, leader)
    kd = sum(np_kd(z, t, T) for z, t in zip(peers, targets))
    kd += np_kd(leader, sum(peers) / len(peers), T)
    return {"loss": ce + w * kd, "ce": ce, "kd": kd}


def np_kdcl(y, z, T, a):
    teacher = sum(z) / len(z)
    ce = sum(np_ce(y, zj) for zj in z)
    kd = sum(np_kd(zj, teacher, T) for zj in z)
    return {"loss": (1 - a) * ce + a * kd, "ce": ce, "kd": kd}


def assert_terms(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(
            float(got[key]), want[key], rtol=1e-5, atol=1e-5, err_msg=key
        )


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("one_hot", [False, True])
def test_dml_loss_matches_numpy(m, one_hot):
    labels, onehot, z = case(m, seed=m)
    y = onehot if one_hot else labels
    assert_terms(losses.dml_loss(y, z, 2.5), np_dml(onehot, z, 2.5))


@pytest.mark.parametrize("m", [2, 3])
def test_one_loss_matches_numpy(m):
    labels, onehot, z = case(m + 1, seed=10 + m)
    peers, gated = z[:m], z[m]
    got = losses.one_loss(labels, peers, gated, 3.0, consistency_weight=0.4)
    assert_terms(got, np_one(onehot, peers, gated, 3.0, 0.4))


@pytest.mark.parametrize("m", [2, 3, 5])
def test_cl_ilr_loss_matches_numpy(m):
    labels, onehot, z = case(m, seed=20 + m)
    got = losses.cl_ilr_loss(labels, z, 4.0, consistency_weight=0.7)
    assert_terms(got, np_cl_ilr(onehot, z, 4.0, 0.7))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_okddip_loss_matches_numpy(m):
    labels, onehot, z = case(m, seed=30 + m)
    peers, leader = z[:-1], z[-1]
    rng = np.random.default_rng(m)
    attention = np_softmax(rng.normal(size=(6, m - 1, m - 1)) * 2).astype("float32")
    got = losses.okddip_loss(labels, peers, leader, attention, 3.0, 0.6)
    assert_terms(got, np_okddip(onehot, peers, leader, attention, 3.0, 0.6))


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0])
def test_kdcl_loss_matches_numpy(a):
    labels, onehot, z = case(3, seed=40)
    assert_terms(
        losses.kdcl_loss(labels, z, 4.0, kd_weight=a), np_kdcl(onehot, z, 4.0, a)
    )


def kd_grad(z, t, T, batch):
    """d KD_T(z, t) / dz = T (softmax(z/T) - softmax(t/T)) / B."""
    return T * (np_softmax(z / T) - np_softmax(t / T)) / batch


@pytest.mark.parametrize("detach", [True, False])
def test_dml_gradients_follow_detach_teacher(detach):
    labels, onehot, z = case(2, batch=4, seed=50)
    T, B = 3.0, 4
    grads = gradients(
        lambda a, b: losses.dml_loss(labels, [a, b], T, detach)["loss"], z
    )
    for j, k in ((0, 1), (1, 0)):
        want = (np_softmax(z[j]) - onehot) / B + kd_grad(z[j], z[k], T, B)
        if not detach:
            # z_j is also the teacher in KD_T(z_k, z_j):
            # d/dt T^2 KL(softmax(t/T) || softmax(z/T)) = T (p_t * (log p_t -
            # log p_z - KL)) / B, with p = softmax(. / T).
            p_t = np_softmax(z[j] / T)
            log_ratio = np_log_softmax(z[j] / T) - np_log_softmax(z[k] / T)
            kl = (p_t * log_ratio).sum(axis=-1, keepdims=True)
            want = want + T * p_t * (log_ratio - kl) / B
        np.testing.assert_allclose(grads[j], want, rtol=1e-4, atol=1e-6)


def test_one_teacher_gets_only_its_cross_entropy_when_detached():
    labels, onehot, z = case(3, batch=4, seed=60)
    peers, gated = z[:2], z[2]

    def total(a, b, t):
        return losses.one_loss(labels, [a, b], t, 3.0, 0.9)["loss"]

    g = gradients(total, peers + [gated])
    np.testing.assert_allclose(g[2], (np_softmax(gated) - onehot) / 4, atol=1e-6)

    def attached(a, b, t):
        return losses.one_loss(labels, [a, b], t, 3.0, 0.9, detach_teacher=False)[
            "loss"
        ]

    g = gradients(attached, peers + [gated])
    assert np.abs(g[2] - (np_softmax(gated) - onehot) / 4).max() > 1e-4


@pytest.mark.parametrize("detach", [True, False])
def test_cl_ilr_targets_follow_detach_teacher(detach):
    labels, onehot, z = case(3, batch=4, seed=70)
    T, w, B = 3.0, 0.5, 4
    grads = gradients(
        lambda *a: losses.cl_ilr_loss(labels, list(a), T, w, detach)["loss"], z
    )
    for i in range(3):
        target = (sum(z) - z[i]) / 2
        want = (np_softmax(z[i]) - onehot) / B + w * kd_grad(z[i], target, T, B)
        close = np.allclose(grads[i], want, rtol=1e-4, atol=1e-6)
        assert close == detach


def test_okddip_attention_is_trained_and_peer_targets_are_detached():
    labels, onehot, z = case(3, batch=4, seed=80)
    peers, leader = z[:2], z[2]
    attention = np.full((4, 2, 2), 0.5, dtype="float32")
    T, w, B = 3.0, 1.0, 4

    def total(a, b, lead, att):
        return losses.okddip_loss(labels, [a, b], lead, att, T, w)["loss"]

    g = gradients(total, peers + [leader, attention])
    assert np.abs(g[3]).max() > 1e-6  # Attention learns through the targets.
    mean = (peers[0] + peers[1]) / 2  # a = 0.5 everywhere: both targets.
    for j in range(2):
        want = (np_softmax(peers[j]) - onehot) / B + w * kd_grad(peers[j], mean, T, B)
        np.testing.assert_allclose(g[j], want, rtol=1e-4, atol=1e-6)
    want = (np_softmax(leader) - onehot) / B + w * kd_grad(leader, mean, T, B)
    np.testing.assert_allclose(g[2], want, rtol=1e-4, atol=1e-6)


def test_kdcl_teacher_is_always_detached():
    labels, onehot, z = case(2, batch=4, seed=90)
    T, a, B = 4.0, 0.5, 4
    grads = gradients(lambda p, q: losses.kdcl_loss(labels, [p, q], T, a)["loss"], z)
    teacher = (z[0] + z[1]) / 2
    for j in range(2):
        want = (1 - a) * (np_softmax(z[j]) - onehot) / B + a * kd_grad(
            z[j], teacher, T, B
        )
        np.testing.assert_allclose(grads[j], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "ablation, dropped",
    [
        ({"distill_from_ensemble": False}, "pe"),
        ({"distill_from_mean_teachers": False}, "pm"),
    ],
)
def test_pcl_ablations_drop_one_term(ablation, dropped):
    labels, onehot, z = case(5, seed=100)
    peers, ensemble, teachers = z[:2], z[2], z[3:]
    full = losses.pcl_loss(labels, peers, ensemble, teachers, 3.0, 0.8)
    ablated = losses.pcl_loss(labels, peers, ensemble, teachers, 3.0, 0.8, **ablation)
    for key in ("ce", "pe", "pm"):  # Every term is still reported.
        np.testing.assert_allclose(float(ablated[key]), float(full[key]), rtol=1e-6)
    np.testing.assert_allclose(
        float(ablated["loss"]),
        float(full["loss"]) - 0.8 * float(full[dropped]),
        rtol=1e-5,
    )


def test_bad_arguments_raise_clear_errors():
    labels, _, z = case(3)
    with pytest.raises(ValueError, match="at least 2 network"):
        losses.dml_loss(labels, z[:1])
    with pytest.raises(ValueError, match="at least 2 network"):
        losses.cl_ilr_loss(labels, z[:1])
    with pytest.raises(ValueError, match="kd_weight=1.5"):
        losses.kdcl_loss(labels, z, kd_weight=1.5)
    with pytest.raises(ValueError, match="temperature=-1"):
        losses.one_loss(labels, z[:2], z[2], temperature=-1)
