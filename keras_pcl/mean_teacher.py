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
