"""The PCL objective (spec section 3) and its building blocks.

Everything here is written with `keras.ops`, so it runs unchanged on
TensorFlow, JAX and PyTorch and inside compiled training steps.

Why the distillation term is not `keras.distillation.LogitsDistillation`:
with its default `loss="kl_divergence"` (Keras 3.15) the string resolves to the
function `keras.losses.kl_divergence`, its `isinstance(loss_fn, KLDivergence)`
check fails, and the KL divergence is taken between the *temperature-scaled
logits* instead of the softened probabilities. Passing a
`keras.losses.KLDivergence()` instance gives the right formula, but it clips
both probability vectors to `[1e-7, 1]`, which under-estimates the divergence
(and zeroes its gradient) as soon as a peer becomes confident, e.g. 97.3
instead of 143.1 for logits of scale 30 at T=3. `distillation_loss` below
computes `T^2 * KL(softmax(t/T) || softmax(z/T))` exactly, in log space.
"""

import keras
import numpy as np
from keras import ops


def distillation_loss(
    student_logits, teacher_logits, temperature=3.0, detach_teacher=True
):
    """Knowledge-distillation term `KD_T(student, teacher)` of spec section 2.

    `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, summed over
    classes and averaged over the batch. By default the teacher side is under
    `stop_gradient`: no gradient reaches whatever produced `teacher_logits`.

    Args:
        student_logits: float tensor of shape `(batch, classes)`.
        teacher_logits: float tensor of the same shape.
        temperature: positive float, the softmax temperature `T`.
        detach_teacher: if False, the gradient of the divergence also flows
            into `teacher_logits` (some reimplementations of the baselines
            of spec section 9 do this; PCL never does).

    Returns:
        A scalar float32 tensor.

    Example:

    >>> z = keras.ops.convert_to_tensor([[2.0, 0.0, -1.0]])
    >>> float(distillation_loss(z, z, temperature=3.0))
    0.0
    """
    _check_temperature(temperature)
    teacher = ops.cast(teacher_logits, "float32")
    if detach_teacher:
        teacher = ops.stop_gradient(teacher)
    student = ops.cast(student_logits, "float32")
    teacher_log_probs = ops.log_softmax(teacher / temperature, axis=-1)
    student_log_probs = ops.log_softmax(student / temperature, axis=-1)
    kl = ops.sum(
        ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
        axis=-1,
    )
    return (temperature**2) * ops.mean(kl)


def cross_entropy(y_true, logits):
    """Mean softmax cross-entropy for integer or one-hot (or soft) labels.

    Args:
        y_true: integer labels of shape `(batch,)` or `(batch, 1)`, or
            one-hot/soft labels of shape `(batch, classes)`.
        logits: float tensor of shape `(batch, classes)`.

    Returns:
        A scalar float32 tensor.
    """
    logits = ops.cast(logits, "float32")
    labels, sparse = standardize_labels(y_true, logits.shape[-1])
    if sparse:
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
    else:
        per_example = keras.losses.categorical_crossentropy(
            labels, logits, from_logits=True
        )
    return ops.mean(per_example)


def standardize_labels(y_true, num_classes):
    """Returns `(labels, sparse)`: integer labels `(batch,)` or float one-hot.

    Args:
        y_true: labels of shape `(batch,)`, `(batch, 1)` (integer class ids) or
            `(batch, num_classes)` (one-hot or soft labels).
        num_classes: int, the number of classes of the logits.

    Raises:
        ValueError: for any other shape.
    """
    shape = tuple(y_true.shape)
    if len(shape) == 1:
        return ops.cast(y_true, "int32"), True
    if len(shape) == 2 and shape[-1] == 1 and num_classes != 1:
        return ops.cast(ops.squeeze(y_true, axis=-1), "int32"), True
    if len(shape) == 2 and shape[-1] == num_classes:
        return ops.cast(y_true, "float32"), False
    raise ValueError(
        "Labels `y` must be integer class ids of shape (batch,) or "
        f"(batch, 1), or one-hot labels of shape (batch, {num_classes}). "
        f"Received: y.shape={shape}"
    )


def check_label_values(y_true, num_classes, name="y"):
    """Raises a clear error for class ids outside `[0, num_classes)`.

    A compiled training step cannot raise on data: an out-of-range id
    becomes an `IndexError` from inside PyTorch, an error from inside
    TensorFlow's kernel, or, on JAX, a silent all-zero target. So the
    model checks in-memory labels (NumPy arrays, lists, backend tensors)
    on the host before `fit`, `evaluate`, `train_on_batch` or
    `test_on_batch` start. A `tf.data.Dataset` or a `PyDataset` is not
    read ahead of training and is not checked.

    Args:
        y_true: labels, as accepted by `standardize_labels`; one-hot labels
            and datasets are returned unchecked.
        num_classes: int, the number of classes of the logits.
        name: the argument's name, for the message.

    Raises:
        ValueError: naming the first bad id and its index.

    Example:

    >>> check_label_values(np.array([0, 2, 1]), num_classes=3)
    >>> try:
    ...     check_label_values(np.array([0, 3]), num_classes=3)
    ... except ValueError as error:
    ...     print(str(error).split("Received: ")[1])
    y[1]=3 (1 of 2 labels out of range)
    """
    if isinstance(y_true, list):
        y_true = np.asarray(y_true)
    elif keras.ops.is_tensor(y_true):
        y_true = keras.ops.convert_to_numpy(y_true)
    if not isinstance(y_true, np.ndarray) or y_true.size == 0:
        return
    sparse = y_true.ndim == 1 or (
        y_true.ndim == 2 and y_true.shape[-1] == 1 and num_classes != 1
    )
    if not sparse or not np.issubdtype(y_true.dtype, np.number):
        return
    flat = y_true.reshape(-1)
    bad = (flat < 0) | (flat >= num_classes) | (flat != np.floor(flat))
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"`{name}` must hold integer class ids in [0, {num_classes}) "
            f"(the model's `num_classes` is {num_classes}); relabel the data "
            "or build the model with more classes. Received: "
            f"{name}[{index}]={flat[index].item()!r} ({int(bad.sum())} of {flat.size} "
            "labels out of range)"
        )


def consistency_rampup(step, rampup_steps, max_weight=1.0):
    """Consistency weight `w(t)` of spec section 3 (the Mean Teacher ramp-up).

    `w(t) = max_weight * exp(-5 * (1 - min(t, t_r) / t_r) ** 2)`. Progress
    `t` and length `t_r` may be counted in any unit (steps here); only their
    ratio matters. With `rampup_steps=0` the weight is `max_weight` from the
    start.

    Args:
        step: scalar tensor or number, the training progress `t`.
        rampup_steps: non-negative number, the ramp-up length `t_r`.
        max_weight: the weight `lambda` reached at the end of the ramp-up.

    Returns:
        A scalar float32 tensor.

    Example:

    >>> round(float(consistency_rampup(40, 80)), 4)
    0.2865
    """
    if rampup_steps < 0:
        raise ValueError(
            f"`rampup_steps` must be >= 0. Received: rampup_steps={rampup_steps}"
        )
    if rampup_steps == 0:
        return ops.cast(max_weight, "float32")
    step = ops.cast(step, "float32")
    progress = ops.minimum(step, float(rampup_steps)) / float(rampup_steps)
    return max_weight * ops.exp(-5.0 * ops.square(1.0 - progress))


def pcl_loss(
    y_true,
    peer_logits,
    ensemble_logits,
    mean_teacher_logits,
    temperature=3.0,
    consistency_weight=1.0,
    distill_from_ensemble=True,
    distill_from_mean_teachers=True,
):
    """The PCL objective of spec section 3.

        L_ce = sum_j CE(z_j, y) + CE(z_e, y)
        L_pe = sum_j KD_T(z_j, stop_gradient(z_e))
        L_pm = sum_j 1/(m-1) sum_{l != j} KD_T(z_j, stop_gradient(z'_l))
        L    = L_ce + w * (L_pe + L_pm)

    The ensemble logits receive gradient only from their own cross-entropy;
    the mean-teacher logits receive none.

    Args:
        y_true: integer labels `(batch,)`/`(batch, 1)` or one-hot labels
            `(batch, classes)`.
        peer_logits: list of `m >= 2` tensors `(batch, classes)`, the peers'
            logits `z_j`, each on its own augmented view.
        ensemble_logits: tensor `(batch, classes)`, the peer ensemble
            teacher's logits `z_e`.
        mean_teacher_logits: list of `m` tensors, `z'_l`, the logits of peer
            `l`'s mean teacher on peer `l`'s view; None (not computed) only
            with `distill_from_mean_teachers=False`, and then `pm` is not
            returned.
        temperature: positive float `T`.
        consistency_weight: the current ramp-up weight `w(t)` (a number or a
            scalar tensor, see `consistency_rampup`).
        distill_from_ensemble: ablation switch; if False, `pe` is computed
            and returned but left out of `loss`.
        distill_from_mean_teachers: ablation switch; if False, `pm` is
            computed and returned but left out of `loss`.

    Returns:
        A dict of scalar tensors: `loss` (the total), `ce`, `pe` and `pm`
        (no `pm` without `mean_teacher_logits`).

    Example:

    >>> import numpy as np
    >>> y = np.array([0, 1])
    >>> z = [np.eye(3, dtype="float32")[:2] * k for k in (1.0, 2.0)]
    >>> out = pcl_loss(y, z, z[0], z, temperature=3.0, consistency_weight=0.5)
    >>> sorted(out)
    ['ce', 'loss', 'pe', 'pm']
    """
    _check_temperature(temperature)
    peer_logits = list(peer_logits)
    if mean_teacher_logits is None and distill_from_mean_teachers:
        raise ValueError(
            "`mean_teacher_logits` is None, but `distill_from_mean_teachers` "
            "is True: the loss distils from them. Pass the mean teachers' "
            "logits, or distill_from_mean_teachers=False. Received: "
            "mean_teacher_logits=None"
        )
    skipped = mean_teacher_logits is None
    mean_teacher_logits = [] if skipped else list(mean_teacher_logits)
    num_peers = len(peer_logits)
    if num_peers < 2:
        raise ValueError(
            "`peer_logits` must hold the logits of at least 2 peers. "
            f"Received: {num_peers}"
        )
    if not skipped and len(mean_teacher_logits) != num_peers:
        raise ValueError(
            "`mean_teacher_logits` must hold one tensor per peer "
            f"({num_peers}). Received: {len(mean_teacher_logits)}"
        )

    ce = cross_entropy(y_true, ensemble_logits)
    for logits in peer_logits:
        ce = ce + cross_entropy(y_true, logits)

    pe = 0.0
    pm = 0.0
    for j, logits in enumerate(peer_logits):
        pe = pe + distillation_loss(logits, ensemble_logits, temperature)
        from_mean_teachers = 0.0
        for l, teacher_logits in enumerate(mean_teacher_logits):
            if l != j:
                from_mean_teachers = from_mean_teachers + distillation_loss(
                    logits, teacher_logits, temperature
                )
        pm = pm + from_mean_teachers / (num_peers - 1)

    weight = ops.cast(consistency_weight, "float32")
    distilled = 0.0
    if distill_from_ensemble:
        distilled = distilled + pe
    if distill_from_mean_teachers:
        distilled = distilled + pm
    loss = ce + weight * distilled
    if skipped:
        return {"loss": loss, "ce": ce, "pe": pe}
    return {"loss": loss, "ce": ce, "pe": pe, "pm": pm}


# ---------------------------------------------------------------------------
# The baselines of spec section 9. Each returns a dict with `loss` (what is
# minimised), `ce` and `kd`. `w` is the ramp-up weight `w(t)` where the
# method has one. `detach_teacher=True` (the default, as in the official ONE
# and FFL code) puts every teacher under stop-gradient.
# ---------------------------------------------------------------------------


def dml_loss(y_true, peer_logits, temperature=3.0, detach_teacher=True):
    """Deep mutual learning: every network learns from every other one.

        loss = sum_j [ CE(z_j) + 1/(m-1) sum_{k != j} KD_T(z_j, z_k) ]

    Args:
        y_true: integer or one-hot labels.
        peer_logits: list of `m >= 2` logit tensors `(batch, classes)`, one
            per network.
        temperature: positive float `T`.
        detach_teacher: put `z_k` under stop-gradient in `KD_T(z_j, z_k)`.

    Returns:
        A dict of scalar tensors: `loss`, `ce` (sum over networks) and `kd`
        (the summed distillation terms).

    Example:

    >>> import numpy as np
    >>> z = [np.eye(3, dtype="float32")[:2] * k for k in (1.0, 2.0)]
    >>> sorted(dml_loss(np.array([0, 1]), z))
    ['ce', 'kd', 'loss']
    """
    _check_temperature(temperature)
    peer_logits = _check_peers(peer_logits, "peer_logits", minimum=2)
    m = len(peer_logits)
    ce = _sum(cross_entropy(y_true, z) for z in peer_logits)
    kd = _sum(
        _sum(
            distillation_loss(z, peer_logits[k], temperature, detach_teacher)
            for k in range(m)
            if k != j
        )
        / (m - 1)
        for j, z in enumerate(peer_logits)
    )
    return {"loss": ce + kd, "ce": ce, "kd": kd}


def one_loss(
    y_true,
    peer_logits,
    gated_logits,
    temperature=3.0,
    consistency_weight=1.0,
    detach_teacher=True,
):
    """ONE: branches distilled from their gated ensemble.

        loss = sum_i CE(z_i) + CE(z_t) + w * sum_i KD_T(z_i, z_t)

    with `z_t = sum_i g_i z_i` the gate-weighted branch logits.

    Args:
        y_true: integer or one-hot labels.
        peer_logits: list of `m >= 2` branch logits `z_i`.
        gated_logits: the teacher logits `z_t`.
        temperature: positive float `T`.
        consistency_weight: `w(t)`.
        detach_teacher: put `z_t` under stop-gradient in the KD terms (its
            own cross-entropy always trains it).

    Returns:
        A dict of scalar tensors: `loss`, `ce` (branches and teacher), `kd`.
    """
    _check_temperature(temperature)
    peer_logits = _check_peers(peer_logits, "peer_logits", minimum=2)
    ce = _sum(cross_entropy(y_true, z) for z in peer_logits)
    ce = ce + cross_entropy(y_true, gated_logits)
    kd = _sum(
        distillation_loss(z, gated_logits, temperature, detach_teacher)
        for z in peer_logits
    )
    loss = ce + ops.cast(consistency_weight, "float32") * kd
    return {"loss": loss, "ce": ce, "kd": kd}


def cl_ilr_loss(
    y_true,
    peer_logits,
    temperature=3.0,
    consistency_weight=1.0,
    detach_teacher=True,
):
    """CL-ILR: each branch learns from the mean of the other branches.

        loss = sum_i CE(z_i) + w * sum_i KD_T(z_i, mean_{k != i} z_k)

    (The backward scaling of the shared trunk's gradient by `1/m` is part of
    the model, `keras_pcl.baselines.CLILRModel`.)

    Args:
        y_true: integer or one-hot labels.
        peer_logits: list of `m >= 2` branch logits.
        temperature: positive float `T`.
        consistency_weight: `w(t)`.
        detach_teacher: put the targets under stop-gradient.

    Returns:
        A dict of scalar tensors: `loss`, `ce`, `kd`.
    """
    _check_temperature(temperature)
    peer_logits = _check_peers(peer_logits, "peer_logits", minimum=2)
    m = len(peer_logits)
    total = _sum(peer_logits)
    ce = _sum(cross_entropy(y_true, z) for z in peer_logits)
    kd = _sum(
        distillation_loss(z, (total - z) / (m - 1), temperature, detach_teacher)
        for z in peer_logits
    )
    loss = ce + ops.cast(consistency_weight, "float32") * kd
    return {"loss": loss, "ce": ce, "kd": kd}


def okddip_loss(
    y_true,
    peer_logits,
    leader_logits,
    attention,
    temperature=3.0,
    consistency_weight=1.0,
    detach_teacher=True,
):
    """OKDDip: auxiliary peers learn from attention-weighted peer ensembles,
    the group leader from the peers' mean.

        t_j  = sum_k a[:, j, k] z_k                  (one target per peer)
        loss = sum_j [ CE(z_j) + w KD_T(z_j, t_j) ]
               + CE(z_lead) + w KD_T(z_lead, mean_k z_k)

    Args:
        y_true: integer or one-hot labels.
        peer_logits: list of the `m - 1 >= 1` auxiliary peers' logits `z_k`.
        leader_logits: the group leader's logits `z_lead`.
        attention: `(batch, m - 1, m - 1)` attention weights, rows summing to
            1 (`softmax(Q K^T)`, self included).
        temperature: positive float `T`.
        consistency_weight: `w(t)`.
        detach_teacher: put the peer logits inside the targets under
            stop-gradient. The attention weights always get the gradient of
            the KD terms: it is how they are learned.

    Returns:
        A dict of scalar tensors: `loss`, `ce` (peers and leader), `kd`.
    """
    _check_temperature(temperature)
    peer_logits = _check_peers(peer_logits, "peer_logits", minimum=1)
    stacked = ops.stack([ops.cast(z, "float32") for z in peer_logits], axis=1)
    teachers = ops.stop_gradient(stacked) if detach_teacher else stacked
    targets = ops.matmul(ops.cast(attention, "float32"), teachers)
    ce = _sum(cross_entropy(y_true, z) for z in peer_logits)
    ce = ce + cross_entropy(y_true, leader_logits)
    kd = _sum(
        distillation_loss(z, targets[:, j], temperature, detach_teacher=False)
        for j, z in enumerate(peer_logits)
    )
    kd = kd + distillation_loss(
        leader_logits, ops.mean(teachers, axis=1), temperature, detach_teacher
    )
    loss = ce + ops.cast(consistency_weight, "float32") * kd
    return {"loss": loss, "ce": ce, "kd": kd}


def kdcl_loss(y_true, peer_logits, temperature=4.0, kd_weight=0.5):
    """KDCL (the "mean of logits" variant): separate networks, each on its own
    view, distilled from the detached mean of their logits.

        t    = stop_gradient(mean_j z_j)
        loss = sum_j [ (1 - a) CE(z_j) + a KD_T(z_j, t) ]

    Args:
        y_true: integer or one-hot labels.
        peer_logits: list of `m >= 2` logit tensors.
        temperature: positive float `T` (4 in the public reimplementation).
        kd_weight: `a` in [0, 1] (0.5 in the public reimplementation).

    Returns:
        A dict of scalar tensors: `loss`, `ce` and `kd` (both unweighted sums).
    """
    _check_temperature(temperature)
    peer_logits = _check_peers(peer_logits, "peer_logits", minimum=2)
    if isinstance(kd_weight, bool) or not (
        isinstance(kd_weight, (int, float)) and 0 <= kd_weight <= 1
    ):
        raise ValueError(
            f"`kd_weight` must be a number in [0, 1]. Received: kd_weight={kd_weight!r}"
        )
    teacher = _sum(ops.cast(z, "float32") for z in peer_logits) / len(peer_logits)
    ce = _sum(cross_entropy(y_true, z) for z in peer_logits)
    kd = _sum(distillation_loss(z, teacher, temperature) for z in peer_logits)
    loss = (1.0 - kd_weight) * ce + kd_weight * kd
    return {"loss": loss, "ce": ce, "kd": kd}


def _sum(values):
    values = list(values)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _check_peers(peer_logits, name, minimum):
    peer_logits = list(peer_logits)
    if len(peer_logits) < minimum:
        raise ValueError(
            f"`{name}` must hold the logits of at least {minimum} "
            f"network(s). Received: {len(peer_logits)}"
        )
    return peer_logits


def _check_temperature(temperature):
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(
            f"`temperature` must be a positive number. Received: "
            f"temperature={temperature!r}"
        )
