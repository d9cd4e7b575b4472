"""A TensorFlow thread pool that runs PCL's peers side by side on small CPUs.

A PCL step is a graph of `num_peers` independent branches: every peer's
view goes through the student trunk and its head, and through the mean
teacher; their backward passes stay independent until the shared trunk's
gradients are summed. TensorFlow's executor runs independent ops at the
same time on its inter-op thread pool, one op per thread, and by default
that pool has one thread per core (each op then splits its own work over
the separate intra-op pool). With fewer cores than peers (a small VM, a
2-core laptop) the inter-op pool, not the cores, limits how much of the
step is in flight.

The pools are process-wide and fixed once TensorFlow runs its first op, so
this is a function to call at the top of a script, not something a model
can do for itself. `keras-pcl train`, `keras-pcl benchmark`,
`examples/quickstart.py` and `examples/train_cifar.py` call it.
"""

import os

import keras


def parallel_branches(method, num_peers):
    """Networks a training step of `method` runs side by side.

    `num_peers` for PCL, its ablations and the baselines (peers of one
    multi-branch network or separate networks); 1 for `vanilla`.

    Example:

    >>> parallel_branches("dml", 3), parallel_branches("vanilla", 3)
    (3, 1)
    """
    return 1 if method == "vanilla" else num_peers


def configure_tensorflow_threads(num_peers=3):
    """Gives TensorFlow's inter-op pool one thread per peer, if it has fewer.

    Sets `tf.config.threading.set_inter_op_parallelism_threads(num_peers)`
    when TensorFlow is the Keras backend, no GPU or TPU is visible, the
    process may run on fewer cores than `num_peers`, and nobody chose a
    pool size yet (`TF_NUM_INTEROP_THREADS` unset, the pool at its
    default). Otherwise it changes nothing. The intra-op pool, which
    decides how each op splits its sums, is left alone, so every computed
    number stays bitwise the same (`tests/threads_test.py`); only how many
    ops run at once changes.

    Measured on a 2-core VM (CIFAR ResNet-32, `m = 3`, batch 128,
    `benchmarks/vs_pytorch.py`, alternating runs): PCL steps 1.01-1.12x
    faster than with TensorFlow's default pool of 2 threads (four runs;
    the most when the VM ran slowest), never slower.

    Example:

    ```python
    import keras_pcl

    keras_pcl.threads.configure_tensorflow_threads(num_peers=3)  # First.
    model = keras_pcl.PeerCollaborativeModel(...)
    ```

    Args:
        num_peers: the `num_peers` of the model that will train (an int
            >= 1).

    Returns:
        The inter-op pool size it set, or None where it left the pool
        alone (another backend, an accelerator, enough cores, or a size
        already chosen).

    Raises:
        ValueError: `num_peers` is not a positive int.
        RuntimeError: TensorFlow already ran an op in this process, so its
            pools are fixed: call this before building any model or tensor.
    """
    if isinstance(num_peers, bool) or not isinstance(num_peers, int) or num_peers < 1:
        raise ValueError(
            f"`num_peers` must be an int >= 1. Received: num_peers={num_peers!r}"
        )
    if keras.backend.backend() != "tensorflow" or _cores() >= num_peers:
        return None
    if os.environ.get("TF_NUM_INTEROP_THREADS"):
        return None
    import tensorflow as tf

    if tf.config.threading.get_inter_op_parallelism_threads():
        return None  # Chosen already, in this process.
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return None
    try:
        tf.config.threading.set_inter_op_parallelism_threads(num_peers)
    except RuntimeError:
        raise RuntimeError(
            "configure_tensorflow_threads: TensorFlow has already run an op in "
            "this process, so its thread pools are fixed. Call it at the top "
            "of the script, before building any model or tensor, or set "
            f"TF_NUM_INTEROP_THREADS={num_peers} in the environment."
        ) from None
    return num_peers


def _cores():
    """CPUs this process may run on (what TensorFlow's default pool counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return os.cpu_count() or 1
