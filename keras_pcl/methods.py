"""Every training method by name: PCL, its ablations and the baselines.

`pcl` is `keras_pcl.PeerCollaborativeModel`; `pcl_no_ensemble`,
`pcl_no_mean_teachers` and `pcl_shared_augmentation` are its ablation
switches, and `pcl_lean` is `pcl_no_mean_teachers` without the mean
teachers' forward passes in training (their batch-norm statistics averaged
from the students: `mean_teacher_statistics="ema"`); every other name is a
class of `keras_pcl.baselines`. Used by
`keras_pcl.training.train` (`keras-pcl train --method=...`), `keras-pcl
benchmark` and the scripts of `benchmarks/`, so that every method is built
the same way around the same backbone.

What a method accepts is read from its class (its constructor's arguments
less its `fixed_arguments`), so this module repeats no fact about any
method.
"""

import difflib
import inspect

PCL_VARIANTS = {
    "pcl": {},
    "pcl_no_ensemble": {"distill_from_ensemble": False},
    "pcl_no_mean_teachers": {"distill_from_mean_teachers": False},
    "pcl_shared_augmentation": {"views_per_peer": False},
    # The no-mean-teacher-distillation ablation without the mean teachers'
    # forward passes in training (their statistics averaged instead).
    "pcl_lean": {
        "distill_from_mean_teachers": False,
        "mean_teacher_statistics": "ema",
    },
}
BASELINE_NAMES = ("vanilla", "dml", "kdcl", "one", "cl_ilr", "okddip")
METHODS = BASELINE_NAMES + tuple(PCL_VARIANTS)


def method_class(name):
    """The model class of method `name` (one of `METHODS`).

    Example:

    >>> method_class("dml").__name__
    'DMLModel'
    """
    check_method(name)
    if name in PCL_VARIANTS:
        from keras_pcl.model import PeerCollaborativeModel

        return PeerCollaborativeModel
    from keras_pcl import baselines

    return baselines.get(name)


def method_options(name):
    """The constructor arguments (after `backbone, num_classes`) of `name`.

    The arguments of the class's `__init__`, plus those of its base classes
    that it passes on through `**kwargs`, less its `fixed_arguments` and the
    ablation switches that the name itself sets.

    Example:

    >>> "ema_decay" in method_options("pcl"), "ema_decay" in method_options("dml")
    (True, False)
    """
    cls = method_class(name)
    options = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        for p in parameters:
            if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name not in ("self", "backbone", "num_classes") + tuple(options):
                options.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
        if klass.__name__ == "MultiBranchModel":
            break
    excluded = set(cls.fixed_arguments) | set(cls.internal_arguments)
    excluded |= set(PCL_VARIANTS.get(name, {}))
    return tuple(o for o in options if o not in excluded)


def build_method(
    name,
    backbone,
    num_classes,
    num_peers=3,
    rampup_steps=0,
    ema_decay=0.999,
    temperature=None,
    preprocessing=None,
    **options,
):
    """Returns the (uncompiled) model of method `name` around `backbone`.

    One set of settings builds every method: a setting that method `name`
    does not have (`ema_decay` for DML, `num_peers` for vanilla, ...) is
    left out, and a setting given as None keeps the method's own default.

    Args:
        name: one of `METHODS`.
        backbone: a fresh backbone (each model needs its own).
        num_classes: number of classes.
        num_peers: peers/branches/networks of the multi-branch methods.
        rampup_steps: `w(t)` ramp-up length, for the methods that have one.
        ema_decay: PCL's mean-teacher decay.
        temperature: distillation temperature; None keeps each method's
            default (3, and 4 for KDCL as in its public reimplementation).
        preprocessing: optional preprocessing layer (default `Rescaling`).
        **options: any other constructor argument of the methods
            (`augmentation`, `consistency_weight`, `split_at`, ...).

    Raises:
        ValueError: for an unknown `name` (listing the known ones), or an
            option that no method has.

    Example:

    ```python
    model = build_method("dml", keras_pcl.backbones.CIFARResNet(depth=8), 10)
    ```
    """
    check_method(name)
    options.update(
        num_peers=num_peers,
        rampup_steps=rampup_steps,
        ema_decay=ema_decay,
        temperature=temperature,
        preprocessing=preprocessing,
    )
    known = set().union(*(method_options(m) for m in METHODS))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"No method has the option(s) {unknown}; the options are "
            f"{sorted(known)}. Received: {unknown[0]}={options[unknown[0]]!r}"
        )
    accepted = method_options(name)
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    kwargs.update(PCL_VARIANTS.get(name, {}))
    return method_class(name)(backbone, num_classes, **kwargs)


def check_method(name):
    """Raises a `ValueError` naming the known methods if `name` is not one."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown method {name!r}.{hint} Known methods: {list(METHODS)}. "
            f"Received: method={name!r}"
        )
