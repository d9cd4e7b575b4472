"""Several processes (one per host, or several on one machine) training one model.

A multi-process run is JAX's: every process calls
`keras.distribution.initialize` (which calls `jax.distributed.initialize`)
before any JAX computation, then trains under one
`keras.distribution.DataParallel` over the devices of every process. Each
process feeds its own slice of every global batch (`Distribution.shard`,
`keras_pcl.training.data.training_stream`), XLA all-reduces the
gradients, and each step equals the single-process step on the same global
batch. Process 0 is the only writer of the workdir (backups, best peer,
TensorBoard logs, final model, export); every process restores from the
same backup, so the workdir must be on a file system that every host sees.

Where the cluster description comes from, field by field: the
`TrainConfig` fields `coordinator_address`, `num_processes` and
`process_id`; for a field left at None, Keras' own environment variables
(`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`,
`KERAS_DISTRIBUTION_PROCESS_ID`); `coordinator_address="auto"` lets JAX
detect the cluster (Cloud TPU pod slices, SLURM, Open MPI). Nothing set:
one process.

Other engines, as of Keras 3.15:

* TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy` (`TF_CONFIG`)
  fails inside Keras 3's TensorFlow trainer (keras-team/keras#20585, since
  TF 2.16): `fit` reduces the first per-replica batch with
  `strategy.reduce` to build the model, which the collective strategy
  cannot do, and reduces its scalar logs over an axis 0 they do not have.
  Both are in Keras' private trainer; this module refuses the case and
  names the JAX path.
* PyTorch: Keras has no distribution backend for torch
  (`keras.distribution` is JAX only, and Keras' torch `fit` trains on one
  device).
"""

import contextlib
import dataclasses
import json
import os
import re

from keras_pcl import validation

AUTO = "auto"
ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
UPSTREAM_TF_ISSUE = "https://github.com/keras-team/keras/issues/20585"

_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]]+):(\d{1,5})")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of a run, as described before they are started.

    Attributes:
        coordinator_address: `HOST:PORT` of process 0, `"auto"` (JAX finds
            the cluster), or None (one process).
        num_processes: how many processes; None with `"auto"`.
        process_id: this process's index in `[0, num_processes)`; None with
            `"auto"`.
    """

    coordinator_address: str = None
    num_processes: int = 1
    process_id: int = 0

    @property
    def multi_process(self):
        return self.coordinator_address is not None

    def describe(self):
        """`coordinator_address=..., num_processes=..., process_id=...`."""
        return ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
        )


def cluster_from_config(config, environ=None):
    """The `Cluster` that `config` (and Keras' environment variables) describe.

    A field of `config` that is None is read from its `KERAS_DISTRIBUTION_*`
    variable; what is still missing then is a single process, or left to
    JAX's detection with `coordinator_address="auto"`.

    Raises:
        ValueError: a partial or inconsistent description (see
            `check_cluster`), or an environment variable that is not an int.
    """
    environ = os.environ if environ is None else environ
    address = config.coordinator_address
    num_processes = config.num_processes
    process_id = config.process_id
    env_addresses = environ.get(ENV_ADDRESSES, "").strip()
    if address is None and env_addresses:
        jobs = [a.strip() for a in env_addresses.split(",") if a.strip()]
        address = jobs[0]
        if num_processes is None and len(jobs) > 1:
            num_processes = len(jobs)
    if num_processes is None:
        num_processes = _env_int(environ, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(environ, ENV_PROCESS_ID)
    if address != AUTO:
        num_processes = 1 if num_processes is None else num_processes
        process_id = 0 if process_id is None and num_processes == 1 else process_id
    cluster = Cluster(address, num_processes, process_id)
    check_cluster(cluster)
    return cluster


def _env_int(environ, name):
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"The environment variable `{name}` must be an int (Keras' "
            "multi-process set-up, `keras.distribution.initialize`). Set it "
            f"to an integer or unset it. Received: {name}={text!r}"
        ) from None


def check_cluster(cluster):
    """Raises a `ValueError` for a partial or inconsistent cluster description.

    * several processes need the coordinator's `HOST:PORT` (or `"auto"`);
    * a coordinator address needs `num_processes >= 2` and this process's
      `process_id`;
    * `process_id` must be in `[0, num_processes)`.
    """
    address, count, index = (
        cluster.coordinator_address,
        cluster.num_processes,
        cluster.process_id,
    )
    received = cluster.describe()
    if count is not None:
        validation.check_int("num_processes", count, minimum=1)
    if index is not None and not (isinstance(index, int) and index >= 0):
        validation.raise_invalid("process_id", index, "an int >= 0")
    if address is None:
        if count is not None and count > 1:
            raise ValueError(
                f"`num_processes={count}` needs `coordinator_address`: the "
                "HOST:PORT of process 0, which every process can reach (e.g. "
                f"--coordinator_address=10.0.0.1:1234), or set {ENV_ADDRESSES}; "
                "'auto' lets JAX find it on a Cloud TPU pod slice, SLURM or "
                f"Open MPI. Received: {received}"
            )
        if index != 0:
            raise ValueError(
                "`process_id` must be in [0, num_processes); a single process "
                f"is process 0. Set --num_processes too. Received: {received}"
            )
        return
    if address != AUTO:
        match = _ADDRESS.fullmatch(address)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(
                "`coordinator_address` must be HOST:PORT (e.g. 10.0.0.1:1234 "
                "or node-0:1234, the same on every process) or 'auto'. "
                f"Received: coordinator_address={address!r}"
            )
        if count == 1:
            raise ValueError(
                "`coordinator_address` is set, but `num_processes` is 1: give "
                "the number of processes (--num_processes=N, the same on "
                "every process), or drop --coordinator_address for a "
                f"single-process run. Received: {received}"
            )
        if index is None:
            raise ValueError(
                "`process_id` is missing: each of the "
                f"{count} processes needs its own id in [0, {count}) "
                f"(--process_id or {ENV_PROCESS_ID}; 0 is the coordinator). "
                f"Received: {received}"
            )
    if count is not None and index is not None and not index < count:
        raise ValueError(
            f"`process_id` must be in [0, num_processes) = [0, {count}). "
            f"Received: {received}"
        )


def initialize(cluster):
    """Joins this process to `cluster` (a no-op for a single process).

    JAX only, and before any JAX computation of the process:
    `keras.distribution.initialize`, which connects to the coordinator,
    waits for every process and agrees on a random seed. Calling it again
    with the same cluster (a second `train` in the same process) is a
    no-op; the distributed system stays up for the life of the process.

    Raises:
        ValueError: several processes on the TensorFlow or torch backend
            (see the module docstring), or a JAX backend already
            initialized for another cluster.
        RuntimeError: JAX ran a computation before this call.
    """
    import keras

    if not cluster.multi_process:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        raise ValueError(tensorflow_multi_worker_message(cluster.describe()))
    if backend != "jax":
        raise ValueError(
            "Several processes need KERAS_BACKEND=jax: Keras 3.15 has no "
            f"distribution backend for {backend} (`keras.distribution` is "
            "JAX only, and Keras' torch `fit` trains on one device). Run "
            "the same command with KERAS_BACKEND=jax, or a single process. "
            f"Received: {cluster.describe()}"
        )
    import jax

    if jax.distributed.is_initialized():
        _check_joined(cluster)
        return
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        # Older JAX: CPU devices of several processes need gloo (over TCP).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = (
        None if cluster.coordinator_address == AUTO else cluster.coordinator_address
    )
    try:
        keras.distribution.initialize(
            address, cluster.num_processes, cluster.process_id
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"{error} The cluster set-up must come first: call "
            "`keras_pcl.training.train` (or `cluster.initialize`) before "
            "anything else in the process runs JAX (building a model, "
            f"`jax.devices()`). Received: {cluster.describe()}"
        ) from error
    _check_joined(cluster)


def _check_joined(cluster):
    import jax

    count, index = jax.process_count(), jax.process_index()
    if (cluster.num_processes not in (None, count)) or (
        cluster.process_id not in (None, index)
    ):
        raise ValueError(
            "This process already belongs to a JAX cluster of "
            f"{count} processes as process {index}; a process joins one "
            f"cluster for its lifetime. Received: {cluster.describe()}"
        )


def tensorflow_multi_worker_message(received):
    """The error for a multi-worker run on TensorFlow (see the module docs)."""
    return (
        "Several processes (workers) are not supported on the TensorFlow "
        "backend: tf.distribute.MultiWorkerMirroredStrategy fails inside "
        "Keras 3's TensorFlow trainer since TF 2.16 (`fit` reduces the "
        "per-replica batch with strategy.reduce, and its scalar logs over "
        f"an axis 0; {UPSTREAM_TF_ISSUE}). Train on several processes with "
        "KERAS_BACKEND=jax and --coordinator_address, --num_processes, "
        "--process_id (docs/howto.md), or on one machine's GPUs with "
        f"strategy='mirrored'. Received: {received}"
    )


def tf_config_workers(environ=None):
    """The number of tasks in `TF_CONFIG`'s cluster (0 when it is not set).

    Counts the `chief` and `worker` tasks, which
    `MultiWorkerMirroredStrategy` would train on.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (ValueError, AttributeError):
        raise ValueError(
            "The environment variable `TF_CONFIG` must be JSON with a "
            '"cluster" (TensorFlow\'s multi-worker set-up). Fix or unset it. '
            f"Received: TF_CONFIG={text[:200]!r}"
        ) from None
    return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))


def process_count():
    """How many processes train together (1 outside a JAX cluster)."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index():
    """This process's index (0 outside a JAX cluster); 0 is the writer."""
    import keras

    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_writer():
    """Whether this process writes the workdir (process 0)."""
    return process_index() == 0


@contextlib.contextmanager
def without_distribution():
    """No Keras distribution inside: for what process 0 does alone.

    A network built here (the exported peer's copy) has ordinary,
    process-local variables, so tracing it for an export needs no other
    process. The model's own variables keep their layouts.
    """
    import keras

    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)
