"""Where training runs: distribution strategy, mixed precision, devices.

`make_distribution` and `set_mixed_precision` change process-wide state (the
Keras distribution, the global dtype policy); `train` also enables op
determinism. `global_state_restored()` puts all three back as they were, so
that a `train` call leaves the process as it found it.
"""

import contextlib
import dataclasses
import warnings

import keras

from keras_pcl import _compat
from keras_pcl import validation
from keras_pcl.training import cluster
from keras_pcl.training.config import MIXED_PRECISION
from keras_pcl.training.config import STRATEGIES


@dataclasses.dataclass
class Distribution:
    """Where training runs: a `scope()` to build the model in, and replicas.

    `num_replicas` counts the devices of every process: the global batch
    is split evenly over them. With several processes (JAX), each feeds
    its `shard` of every global batch.
    """

    name: str
    num_replicas: int
    strategy: object = None  # A `tf.distribute.Strategy` on TensorFlow.
    num_processes: int = 1
    process_index: int = 0

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    @property
    def is_writer(self):
        """Whether this process writes the workdir (process 0)."""
        return self.process_index == 0

    def shard(self, dataset):
        """This process's part of every batch of `dataset` (batched `tf.data`).

        Process `i` of `P` keeps rows `[i * n / P, (i + 1) * n / P)` of each
        batch of `n` rows, and Keras' JAX trainer puts the parts back
        together (`jax.make_array_from_process_local_data`) into the
        global batch. One process: `dataset` itself. Every batch size must
        be divisible by the number of processes.
        """
        if self.num_processes == 1:
            return dataset
        import tensorflow as tf

        count, index = self.num_processes, self.process_index

        def local_rows(*batch):
            rows = tf.shape(tf.nest.flatten(batch)[0])[0] // count
            part = tf.nest.map_structure(
                lambda t: t[index * rows : (index + 1) * rows], batch
            )
            return part if len(part) > 1 else part[0]

        return dataset.map(local_rows)


def make_distribution(name="auto"):
    """Sets up data-parallel training for the current backend.

    * TensorFlow: a `tf.distribute` strategy. `"auto"`: `MirroredStrategy`
      over all GPUs if there are several, else the default strategy;
      `"cpu"`/`"gpu"`: `OneDeviceStrategy`; `"mirrored"`:
      `MirroredStrategy`; `"tpu"`: `TPUStrategy` through
      `TPUClusterResolver` (Colab, Cloud TPU VMs).
    * JAX: `keras.distribution.DataParallel` over all devices when there are
      several (`"auto"`, `"mirrored"`, `"gpu"`, `"tpu"`); `"cpu"` uses one.
      In a JAX cluster (`keras_pcl.training.cluster.initialize` first),
      the devices of every process, each process feeding its `shard` of
      the data (`"cpu"` is refused there).
    * PyTorch: one device (`"auto"`, `"cpu"`, `"gpu"`); Keras' torch
      backend has no data-parallel `fit`.

    Args:
        name: one of `STRATEGIES`.

    Returns:
        A `Distribution`.

    Raises:
        ValueError: an unknown name, a strategy the backend does not have,
            hardware that is not there (no TPU or GPU found), or several
            workers in `TF_CONFIG` on TensorFlow (see
            `keras_pcl.training.cluster`).
    """
    validation.check_choice("strategy", name, STRATEGIES)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_distribution(name)
    if backend == "jax":
        return _jax_distribution(name)
    if name in ("mirrored", "tpu"):
        raise ValueError(
            f"`strategy={name!r}` is not available on the torch backend: "
            "Keras' torch `fit` trains on one device. Use "
            "KERAS_BACKEND=tensorflow or jax for multi-device training, or "
            f"strategy='auto'. Received: strategy={name!r}"
        )
    if name == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "`strategy='gpu'`, but torch finds no CUDA device. Use "
                "strategy='cpu' or 'auto'. Received: strategy='gpu'"
            )
    return Distribution(name, 1)


def _tensorflow_distribution(name):
    import tensorflow as tf

    workers = cluster.tf_config_workers()
    if workers > 1 and name != "tpu":
        raise ValueError(
            cluster.tensorflow_multi_worker_message(
                f"TF_CONFIG with {workers} workers, strategy={name!r}"
            )
        )

    gpus = tf.config.list_logical_devices("GPU")
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError, RuntimeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"`strategy='tpu'`, but no TPU was found ({reason}). "
                "On Colab pick a TPU runtime; elsewhere set TPU_NAME. "
                "Received: strategy='tpu'"
            ) from None
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "mirrored" or (name == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    elif name == "gpu":
        if not gpus:
            raise ValueError(
                "`strategy='gpu'`, but TensorFlow finds no GPU. Use "
                "strategy='cpu' or 'auto'. Received: strategy='gpu'"
            )
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    elif name == "cpu":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    else:
        strategy = tf.distribute.get_strategy()
    return Distribution(name, strategy.num_replicas_in_sync, strategy)


def _jax_distribution(name):
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    wanted = {"gpu": "gpu", "tpu": "tpu"}.get(name)
    if wanted and platform != wanted:
        build = "cuda12" if wanted == "gpu" else "tpu"
        raise ValueError(
            f"`strategy={name!r}`, but JAX runs on {platform} "
            f"({len(devices)} device(s)). Install the jax[{build}] "
            f"build or pick strategy='auto'. Received: strategy={name!r}"
        )
    count = jax.process_count()
    if count > 1:
        if name == "cpu":
            raise ValueError(
                f"`strategy='cpu'` trains on one device, but this is one of "
                f"{count} processes training together: use strategy='auto' "
                f"(the {len(devices)} devices of all processes). "
                "Received: strategy='cpu'"
            )
        # Each process feeds its own part of every batch (`shard`); Keras'
        # auto-sharding would split a last, smaller validation batch
        # unevenly between the processes.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )
        return Distribution(
            name, len(devices), num_processes=count, process_index=jax.process_index()
        )
    if name == "cpu" or len(devices) == 1:
        return Distribution(name, 1)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    return Distribution(name, len(devices))


def set_mixed_precision(mode, distribution):
    """Sets Keras' global dtype policy for `mode` ("none", "float16", "bfloat16").

    Warns when the hardware gains nothing from it: float16 on CPU or TPU
    (TPUs compute in bfloat16; CPUs emulate float16 slowly), bfloat16 on a
    CPU without bfloat16 instructions (`cpu_has_bfloat16()`). With them,
    every backend trains faster in `mixed_bfloat16` than in float32
    (ResNet-32 PCL on a 2-core AVX512_BF16 CPU: 1.36-1.55x,
    `benchmarks/README.md`). Training stays correct: logits, losses and
    mean teachers are float32, and float16 gets Keras' loss scaling.
    """
    policy = dtype_policy_name(mode)
    if mode == "none":
        keras.mixed_precision.set_global_policy(policy)
        return
    device = device_kind(distribution)
    advice = None
    if mode == "float16" and device in ("cpu", "tpu"):
        advice = (
            "float16 on GPUs."
            if device == "cpu"
            else "bfloat16 on TPUs or recent GPUs."
        )
    elif mode == "bfloat16" and device == "cpu" and not cpu_has_bfloat16():
        advice = (
            "bfloat16 on TPUs, recent GPUs, or CPUs with bfloat16 "
            "instructions (AVX512_BF16, AMX-BF16, Arm BF16), which this one "
            "lacks."
        )
    if advice:
        warnings.warn(
            f"mixed_precision={mode!r} on {device.upper()}: training is "
            f"correct but not faster (and may be slower); it pays off with {advice}",
            stacklevel=2,
        )
    keras.mixed_precision.set_global_policy(policy)


def dtype_policy_name(mode):
    """The Keras dtype policy of a `mixed_precision` mode.

    Example:

    >>> dtype_policy_name("none"), dtype_policy_name("bfloat16")
    ('float32', 'mixed_bfloat16')
    """
    validation.check_choice("mixed_precision", mode, MIXED_PRECISION)
    return "float32" if mode == "none" else f"mixed_{mode}"


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has bfloat16 arithmetic, as Linux reports it.

    True when the `flags` (x86) or `Features` (Arm) of `cpuinfo` name
    `avx512_bf16`, `amx_bf16` or `bf16`; False where they do not, or
    where the file cannot be read (other systems: unknown, so no promise).
    """
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    flags = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def device_kind(distribution):
    """`"tpu"`, `"gpu"` or `"cpu"`: what `distribution` trains on."""
    backend = keras.backend.backend()
    if distribution.name == "tpu":
        return "tpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def enable_op_determinism():
    """Makes TensorFlow's ops deterministic (other backends: a no-op).

    JAX on CPU and Keras' torch ops are deterministic for the same seed;
    TensorFlow needs `tf.config.experimental.enable_op_determinism`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def global_state_restored():
    """Restores the dtype policy, distribution and op determinism on exit.

    `train` changes these process-wide settings; inside this context it
    may, and the caller finds them as they were when `train` returns or
    raises.
    """
    policy = keras.mixed_precision.global_policy()
    distribution = keras.distribution.distribution()
    determinism = _op_determinism()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)
        keras.distribution.set_distribution(distribution)
        if determinism is False and _op_determinism():
            _compat.disable_tensorflow_op_determinism()


def _op_determinism():
    """TensorFlow's op determinism flag, or None on the other backends."""
    if keras.backend.backend() != "tensorflow":
        return None
    return _compat.tensorflow_op_determinism()
