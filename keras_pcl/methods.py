"""Every training method by name: PCL, its ablations and the baselines.

`pcl` is `keras_pcl.PeerCollaborativeModel`; `pcl_no_ensemble`,
`pcl_no_mean_teachers` and `pcl_shared_augmentation` are its ablation
switches; every other name is a class of `keras_pcl.baselines`. Used by
`keras-pcl benchmark` and the scripts of `benchmarks/`, so that every
method is built the same way around the same backbone.
"""

import difflib

PCL_VARIANTS = {
    "pcl": {},
    "pcl_no_ensemble": {"distill_from_ensemble": False},
    "pcl_no_mean_teachers": {"distill_from_mean_teachers": False},
    "pcl_shared_augmentation": {"shared_augmentation": True},
}
METHODS = ("vanilla", "dml", "kdcl", "one", "cl_ilr", "okddip") + tuple(PCL_VARIANTS)
# Methods whose loss has the ramp-up weight `w(t)`.
_RAMPED = {"one", "cl_ilr", "okddip"} | set(PCL_VARIANTS)
# Methods with a distillation temperature (vanilla has none).
_TEMPERATURE = {"dml", "kdcl", "one", "cl_ilr", "okddip"} | set(PCL_VARIANTS)


def build_method(
    name,
    backbone,
    num_classes,
    num_peers=3,
    rampup_steps=0,
    ema_decay=0.999,
    temperature=None,
    preprocessing=None,
):
    """Returns the (uncompiled) model of method `name` around `backbone`.

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

    Raises:
        ValueError: for an unknown `name` (listing the known ones).

    Example:

    ```python
    model = build_method("dml", keras_pcl.backbones.CIFARResNet(depth=8), 10)
    ```
    """
    import keras_pcl

    check_method(name)
    kwargs = {"preprocessing": preprocessing}
    if name != "vanilla":
        kwargs["num_peers"] = num_peers
    if name in _RAMPED:
        kwargs["rampup_steps"] = rampup_steps
    if name in _TEMPERATURE and temperature is not None:
        kwargs["temperature"] = temperature
    if name in PCL_VARIANTS:
        return keras_pcl.PeerCollaborativeModel(
            backbone,
            num_classes,
            ema_decay=ema_decay,
            **PCL_VARIANTS[name],
            **kwargs,
        )
    return keras_pcl.baselines.get(name)(backbone, num_classes, **kwargs)


def check_method(name):
    """Raises a `ValueError` naming the known methods if `name` is not one."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown method {name!r}.{hint} Known methods: {list(METHODS)}."
        )
