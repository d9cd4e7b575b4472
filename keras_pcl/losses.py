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
from keras import ops


def distillation_loss(student_logits, teacher_logits, temperature=3.0):
    """Knowledge-distillation term `KD_T(student, teacher)` of spec section 2.

    `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, summed over
    classes and averaged over the batch. The teacher side is under
    `stop_gradient`: no gradient reaches whatever produced `teacher_logits`.

    Args:
        student_logits: float tensor of shape `(batch, classes)`.
        teacher_logits: float tensor of the same shape.
        temperature: positive float, the softmax temperature `T`.

    Returns:
        A scalar float32 tensor.

    Example:

    >>> z = keras.ops.convert_to_tensor([[2.0, 0.0, -1.0]])
    >>> float(distillation_loss(z, z, temperature=3.0))
    0.0
    """
    _check_temperature(temperature)
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
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
            `l`'s mean teacher on peer `l`'s view.
        temperature: positive float `T`.
        consistency_weight: the current ramp-up weight `w(t)` (a number or a
            scalar tensor, see `consistency_rampup`).

    Returns:
        A dict of scalar tensors: `loss` (the total), `ce`, `pe` and `pm`.

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
    mean_teacher_logits = list(mean_teacher_logits)
    num_peers = len(peer_logits)
    if num_peers < 2:
        raise ValueError(
            "`peer_logits` must hold the logits of at least 2 peers. "
            f"Received: {num_peers}"
        )
    if len(mean_teacher_logits) != num_peers:
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
    loss = ce + weight * (pe + pm)
    return {"loss": loss, "ce": ce, "pe": pe, "pm": pm}


def _check_temperature(temperature):
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(
            f"`temperature` must be a positive number. Received: "
            f"temperature={temperature!r}"
        )
