"""Which speed-ups a model uses: one policy, decided by committed figures.

keras-pcl has two kinds of speed-up for the training step:

* **Fast paths** (`keras_pcl.fast_paths`) replace Keras' kernels: on
  torch, `Conv2D` without layout copies, PyTorch's fused batch norm, `ReLU`
  and `Add` without `Layer.__call__`, and a multi-tensor mean-teacher
  update; on TensorFlow, the fused batch norm (`FusedBatchNormV3`). They
  compute what the Keras layers compute (up to float32 reduction order;
  `tests/fast_paths_test.py`), but they are other kernels, so under
  `"auto"` they run only where a committed figure shows them faster.
* **Fused views** (`keras_pcl.fusion`) are an exact rearrangement built
  from Keras ops alone: the peers' views go through a shared network as one
  batch, with batch-norm statistics per view. Under `"auto"` they are on
  where they are expected to pay, a GPU or TPU (the `num_peers` small
  trunk passes are launch-bound there); that is unmeasured until a figure
  in `benchmarks/results/` confirms it. On a CPU they measured slower.

Every model of `keras_pcl` takes `fast_paths` and `fuse_views`, each
`"auto"` (default), True (force) or False (off). `EVIDENCE` is the one
table behind `"auto"`: per speed-up, backend and device kind, whether the
speed-up was measured faster and the result file that shows it. The
environment variable `KERAS_PCL_FAST_PATHS` (`"0"`/`"1"`, read when a
model is built) overrides `fast_paths="auto"`, e.g. to compare.

What a model uses, and why, is logged once when it is built (logger
`keras_pcl`, level INFO; the `keras-pcl` command shows it) and is
`model.speedups`.

This module is the only way from the core (models, losses, mean teachers)
to the acceleration modules: `CONTRIBUTING.md`, "Layers".
"""

import collections
import logging
import os

import keras

from keras_pcl import fast_paths as _fast_paths
from keras_pcl import fusion as _fusion

ENVIRONMENT_VARIABLE = "KERAS_PCL_FAST_PATHS"
CHOICES = ("auto", True, False)
DEVICE_KINDS = ("cpu", "gpu", "tpu")
# The backends with fast paths (JAX's compiler, XLA, fuses these ops itself).
FAST_PATH_BACKENDS = ("torch", "tensorflow")


class Evidence(collections.namedtuple("Evidence", ["speedup", "result_file"])):
    """A committed measurement: speed-up over the plain path, and its file.

    `speedup` is images/s with the speed-up divided by images/s without it,
    in one run of `result_file` (a path from the repository root).
    """

    @property
    def faster(self):
        return self.speedup > 1.0


# (speed-up, backend, device kind) -> Evidence. `"auto"` turns a fast path
# on only where its entry is faster; fused views are on on "gpu" and "tpu"
# (no entry: expected to pay, unmeasured) and follow their entry elsewhere.
# Add an entry with the file that shows it when a device kind is measured.
EVIDENCE = {
    # PCL step, CIFAR ResNet-32, m = 3, batch 128, 2-core VM, 2026-12-01
    # 22:50 UTC: torch 73.4 vs 48.4 img/s with Keras' ops, TensorFlow
    # 102.0 vs 75.5 (`vs_pytorch.py --keras_ops`).
    ("fast_paths", "torch", "cpu"): Evidence(
        1.515, "benchmarks/results/vs_pytorch_20261201.json"
    ),
    ("fast_paths", "tensorflow", "cpu"): Evidence(
        1.350, "benchmarks/results/vs_pytorch_20261201.json"
    ),
    # Same step, fused vs one pass per view, 2-core VM, 2026-12-01:
    # torch 53.0 vs 60.1 img/s, JAX 29.8 vs 36.0, TensorFlow 96.4 vs 96.7.
    ("fuse_views", "torch", "cpu"): Evidence(
        0.882, "benchmarks/results/throughput_fusion_torch.json"
    ),
    ("fuse_views", "jax", "cpu"): Evidence(
        0.830, "benchmarks/results/throughput_fusion_jax.json"
    ),
    ("fuse_views", "tensorflow", "cpu"): Evidence(
        0.997, "benchmarks/results/throughput_fusion_tensorflow.json"
    ),
}


class Speedups(
    collections.namedtuple(
        "Speedups", ["backend", "device_kind", "fast_paths", "fuse_views", "reasons"]
    )
):
    """The speed-ups a model uses (`model.speedups`).

    Attributes:
        backend: the Keras backend.
        device_kind: `"cpu"`, `"gpu"` or `"tpu"` (see `device_kind`).
        fast_paths: bool, whether the fast paths run.
        fuse_views: bool, whether shared networks run the views as one batch
            where that is exact.
        reasons: a tuple of strings, why (one per speed-up).
    """

    def __str__(self):
        return (
            f"keras_pcl speed-ups ({self.backend}, {self.device_kind}): "
            + "; ".join(self.reasons)
        )


def device_kind():
    """The kind of device the current backend trains on: cpu, gpu or tpu."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platform = jax.devices()[0].platform
        return platform if platform in ("gpu", "tpu") else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("TPU"):
            return "tpu"
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def resolve(fast_paths="auto", fuse_views="auto"):
    """The speed-ups a model built now uses.

    Args:
        fast_paths: `"auto"`, True or False (see the module docstring).
        fuse_views: `"auto"`, True or False.

    Returns:
        A `Speedups`.

    Raises:
        ValueError: an argument outside `CHOICES`, or a bad
            `KERAS_PCL_FAST_PATHS`.

    Example:

    ```python
    speedups = keras_pcl.speedups.resolve()  # What a model built now uses.
    print(speedups)  # On a torch CPU: fast paths on (auto: 1.51x measured ...
    ```
    """
    for name, value in (("fast_paths", fast_paths), ("fuse_views", fuse_views)):
        if not (value is True or value is False or value == "auto"):
            raise ValueError(
                f"`{name}` must be 'auto', True or False. Received: {name}={value!r}"
            )
    backend = keras.backend.backend()
    kind = device_kind()
    where = f"{backend} on a {kind.upper() if kind != 'cpu' else 'CPU'}"
    fast, fast_reason = _resolve_fast_paths(fast_paths, backend, kind, where)
    fuse, fuse_reason = _resolve_fuse_views(fuse_views, backend, kind, where)
    return Speedups(backend, kind, fast, fuse, (fast_reason, fuse_reason))


def _resolve_fast_paths(value, backend, kind, where):
    if backend not in FAST_PATH_BACKENDS:
        return False, f"fast paths off (none for {backend}: XLA fuses these ops)"
    if value is not True and value is not False:
        value = _from_environment()
        if value is not None:
            state = "on" if value else "off"
            return value, f"fast paths {state} ({ENVIRONMENT_VARIABLE}={int(value)})"
        return _auto("fast paths", ("fast_paths", backend, kind), where, None)
    return value, f"fast paths {'on' if value else 'off'} (fast_paths={value})"


def _resolve_fuse_views(value, backend, kind, where):
    if value is not True and value is not False:
        unmeasured = kind in ("gpu", "tpu")
        return _auto("fused views", ("fuse_views", backend, kind), where, unmeasured)
    return value, f"fused views {'on' if value else 'off'} (fuse_views={value})"


def _auto(name, key, where, default):
    """(on, reason) under "auto": the figure of `key`, else `default`."""
    evidence = EVIDENCE.get(key)
    if evidence is not None:
        state = "on" if evidence.faster else "off"
        return evidence.faster, (
            f"{name} {state} (auto: {evidence.speedup:.2f}x measured on "
            f"{where}, {evidence.result_file})"
        )
    if default:
        return True, f"{name} on (auto: expected faster on {where}, unmeasured)"
    return False, f"{name} off (auto: no committed figure for {where})"


def _from_environment():
    """`KERAS_PCL_FAST_PATHS`: True ("1"), False ("0") or None (unset)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("0", "1", "false", "true"):
        raise ValueError(
            f"The environment variable {ENVIRONMENT_VARIABLE} must be '1' "
            "(force the fast paths), '0' (Keras' own ops) or unset (the "
            f"committed figures decide). Received: {value!r}"
        )
    return value in ("1", "true")


def log(speedups):
    """Logs what `speedups` turns on and why, once (logger `keras_pcl`)."""
    logging.getLogger("keras_pcl").info("%s", speedups)


# The acceleration modules, reached from the core through here only.


def fusable(network):
    """See `keras_pcl.fusion.fusable`."""
    return _fusion.fusable(network)


def view_batched_network(network, num_views, fast):
    """See `keras_pcl.fusion.ViewBatchedNetwork`."""
    return _fusion.ViewBatchedNetwork(network, num_views, fast=fast)


def ema_update(student_variables, teacher_variables, alpha):
    """See `keras_pcl.fast_paths.ema_update` (torch, float32)."""
    return _fast_paths.ema_update(student_variables, teacher_variables, alpha)


def compiling():
    """See `keras_pcl.fast_paths.compiling`."""
    return _fast_paths.compiling()
