"""The temporal-mean (EMA) update of the peer mean teachers (spec section 4).

Written by hand: `keras.optimizers.Optimizer(use_ema=True)` keeps one EMA of
the variables it trains, but with a different warm-up, updated after the
optimizer step, and with no way to run a second network on the averaged
weights inside the same step. PCL needs the averaged weights as a separate,
runnable network, updated inside the compiled training step (a per-batch
callback would be skipped with `steps_per_execution > 1` and would force a
device-to-host sync every step on JAX).
"""

import keras
from keras import ops

from keras_pcl import _compat
from keras_pcl import speedups

# The paper's decay (spec section 7), which averages over ~1,000 steps.
PAPER_EMA_DECAY = 0.999
# The mean teacher averages over at most this fraction of a run's steps.
EMA_HORIZON_FRACTION = 0.1


def ema_horizon(ema_decay):
    """The number of steps `1 / (1 - alpha)` that a decay averages over.

    Example:

    >>> round(ema_horizon(0.999))
    1000
    """
    return 1.0 / (1.0 - ema_decay)


def ema_decay_for_run(total_steps, ema_decay=PAPER_EMA_DECAY):
    """The largest decay <= `ema_decay` that fits a run of `total_steps`.

    The decay `alpha` averages the students over about `1 / (1 - alpha)`
    steps, and before that many steps (`ema_decay_at`'s warm-up) over every
    step since the start, the random initialisation included. A run of
    fewer than ten times that many steps would deploy a mean teacher that
    is still mostly its early, untrained weights. So the decay is lowered
    until it averages over at most a tenth of the run (`1 / (1 - alpha) <=
    total_steps / 10`), and never raised above `ema_decay`. The paper's
    runs (CIFAR: 300 epochs of 391 steps) keep 0.999 exactly: any run of
    10,000 steps or more does.

    Args:
        total_steps: int, the optimizer steps of the whole run.
        ema_decay: float in [0, 1), the decay of a long run.

    Returns:
        A float in [0, ema_decay].

    Example:

    >>> ema_decay_for_run(300 * 391), ema_decay_for_run(2 * 500)
    (0.999, 0.99)
    """
    horizon = EMA_HORIZON_FRACTION * total_steps
    if horizon <= 1:
        return 0.0  # The mean teacher follows its student.
    return min(float(ema_decay), 1.0 - 1.0 / horizon)


def ema_decay_warning(ema_decay, total_steps, name="ema_decay"):
    """A message if `ema_decay` averages over more than a tenth of the run.

    Returns:
        None when `ema_decay <= ema_decay_for_run(total_steps)` (its
        horizon `ema_horizon(ema_decay)` is at most a tenth of the run, or
        the decay is 0), else a message naming `name`, the run's steps and
        the decay that fits.
    """
    # Exactly when `ema_decay` exceeds the decay that fits the run (0 fits
    # any run: the mean teacher then follows its student).
    if ema_decay <= ema_decay_for_run(total_steps, ema_decay):
        return None
    return (
        f"`{name}={ema_decay:g}` averages the mean teachers over about "
        f"{ema_horizon(ema_decay):,.0f} steps, more than a tenth of this run's "
        f"{total_steps:,} steps: the deployed mean teacher stays close to its "
        "early, untrained weights. Pass "
        f"{name}={ema_decay_for_run(total_steps, ema_decay):.4g} (or, in "
        "`keras_pcl.training`, leave `ema_decay` unset), or train longer."
    )


def ema_decay_at(step, ema_decay):
    """Decay `alpha_k = min(1 - 1/(k + 1), alpha)` used at training step `k`.

    Args:
        step: number of optimizer updates done so far, `k` (number or scalar
            tensor).
        ema_decay: float in `[0, 1)`, the final decay `alpha`.

    Returns:
        A scalar float32 tensor.

    Example:

    >>> [round(float(ema_decay_at(k, 0.999)), 3) for k in (0, 1, 3, 10**6)]
    [0.0, 0.5, 0.75, 0.999]
    """
    step = ops.cast(step, "float32")
    return ops.minimum(1.0 - 1.0 / (step + 1.0), ema_decay)


def update_mean_teacher(
    student_variables, teacher_variables, step, ema_decay, fast=False
):
    """`theta' <- alpha_k * theta' + (1 - alpha_k) * theta` for each pair.

    Args:
        student_variables: list of the student's variables `theta`.
        teacher_variables: list of the mean teacher's variables `theta'`,
            in the same order and with the same shapes.
        step: `k`, the number of optimizer updates done so far.
        ema_decay: float in `[0, 1)`.
        fast: bool; on the torch backend with float32 variables, update all
            of them with three multi-tensor ops
            (`keras_pcl.fast_paths.ema_update` through `keras_pcl.speedups`,
            bitwise the same result).
    """
    # The model calls this inside its own `__call__`, where a mixed-precision
    # policy autocasts float32 variables to float16 on read: the average
    # would then be taken in float16 (at alpha = 0.999, `1 - alpha` rounds to
    # 0.000977 and updates below a float16 ulp of the teacher are lost). It
    # runs in the variables' own dtype instead.
    with _compat.without_autocast():
        alpha = ema_decay_at(step, ema_decay)
        if (
            fast
            and keras.backend.backend() == "torch"
            and _all_float32(student_variables, teacher_variables)
        ):
            speedups.ema_update(student_variables, teacher_variables, alpha)
            return
        for student, teacher in zip(student_variables, teacher_variables):
            value = ops.stop_gradient(ops.cast(student, teacher.dtype))
            a = ops.cast(alpha, teacher.dtype)
            teacher.assign(a * teacher + (1.0 - a) * value)


def _all_float32(*variable_lists):
    return not (_compat.in_stateless_scope() or speedups.compiling()) and all(
        v.dtype == "float32" for variables in variable_lists for v in variables
    )


def freeze_variable(variable):
    """Marks a variable as not trained by the optimizer, on every backend.

    The layers that own it stay `trainable`, so batch normalisation in a mean
    teacher still normalises with batch statistics during training, as spec
    section 4 requires (a `trainable=False` BatchNormalization layer runs in
    inference mode).
    """
    variable.trainable = False
    _compat.freeze_torch_variable(variable)
