"""Process-wide settings for training on a CPU, for whoever owns the process.

The library never calls these: importing `keras_pcl`, building a model and
`fit` leave the process as they found it (`tests/process_test.py`). The
`keras-pcl` command, the example scripts and the benchmarks own their
process and call `configure(method, num_peers)` first, which applies the
measured settings below and says what it set in one line. Neither setting
changes a computed number, only speed.

## TensorFlow's inter-op pool (`configure_tensorflow_threads`)

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
can do for itself.

## glibc's malloc (`configure_malloc`)

On Linux, PyTorch's CPU tensors come from glibc's `malloc`. glibc serves
a block above its mmap threshold (dynamic, 128 KiB up to 32 MiB) with
fresh pages from the kernel, and gives freed memory at the top of its heap
back to the kernel once it exceeds the trim threshold (twice the mmap
threshold). A plain network's step settles into reusing its blocks, but a
PCL step frees and allocates activations of many sizes (`m` views through
student and mean teacher, and their gradients), so glibc keeps returning
memory and the next step takes it back one zeroed 4 KiB page at a time:
about 100,000 minor page faults per step for CIFAR ResNet-32, `m = 3`,
batch 128 on the torch backend (none for the plain network's step).

`configure_malloc()` fixes both thresholds (`mallopt`, which also turns
glibc's dynamic adjustment off): blocks up to 32 MiB, glibc's largest mmap
threshold, come from the heap, and freed memory stays there for the next
step. The process then holds its peak memory instead of returning it
between steps. Only where memory is allocated changes, never a computed
number (`tests/process_test.py` trains bitwise the same).

No library does this for a Python process (PyTorch's CPU caching allocator
is for mobile builds only), so it is written here: one `mallopt` call per
threshold through `ctypes`. It is process-wide, like an environment
variable, so it is a function a script calls, not something a model does
for itself. The same
settings can be given before Python starts with
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=...`.
"""

import ctypes
import os

import keras

from keras_pcl.validation import check_int

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit machines (HEAP_MAX_SIZE / 2);
# larger blocks are always mapped afresh, whatever the setting.
MMAP_THRESHOLD = 32 * 1024 * 1024
# `mallopt` takes a C int: the largest trim threshold it can set (2 GiB).
TRIM_THRESHOLD = 2**31 - 1

# "0" leaves malloc alone wherever `configure_malloc` is called.
SWITCH = "KERAS_PCL_CONFIGURE_MALLOC"
# Settings a user may already have chosen for glibc's malloc.
_MALLOC_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
# Allocators that replace glibc's malloc when preloaded.
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def configure_malloc():
    """Keeps freed memory in glibc's heap on the torch backend, if nobody chose.

    Sets glibc's mmap threshold to 32 MiB and its trim threshold to 2 GiB
    with `mallopt` when the Keras backend is PyTorch, the process runs on
    glibc, and neither `GLIBC_TUNABLES` nor a `MALLOC_*_` variable sets
    malloc already, nor is another allocator preloaded (`LD_PRELOAD`), nor
    the environment variable `KERAS_PCL_CONFIGURE_MALLOC` is `"0"` (the
    switch that keeps glibc's own behaviour, for `keras-pcl train` and
    the examples too). Otherwise it changes nothing. TensorFlow and JAX
    manage their own buffers (measured at about 1,000 and 240,000 page
    faults per PCL step, the latter unchanged by these settings), so they
    are left alone.
    It may be called at any time; it affects the allocations after it.

    Measured on a 2-core VM (CIFAR ResNet-32, `m = 3`, batch 128, torch
    backend): page faults per PCL step from about 100,000 to under 10,
    and `benchmarks/vs_pytorch.py --with_configured_malloc` gives the PCL
    step's speed-up, side by side (see `benchmarks/README.md`).

    Example:

    ```python
    import keras_pcl.process

    keras_pcl.process.configure_malloc()  # Before training.
    model = keras_pcl.PeerCollaborativeModel(...)
    ```

    Returns:
        A dict of the thresholds it set (`mmap_threshold`,
        `trim_threshold`, in bytes), or None where it left malloc alone
        (another backend, another C library or allocator, or settings
        already chosen).

    Raises:
        ValueError: `KERAS_PCL_CONFIGURE_MALLOC` is neither "1" nor "0".
        RuntimeError: glibc refused a setting (the message names it).
    """
    if not _switched_on() or keras.backend.backend() != "torch":
        return None
    if _chosen_already():
        return None
    libc = _glibc()
    if libc is None:
        return None
    settings = {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    for name, option in (
        ("mmap_threshold", _M_MMAP_THRESHOLD),
        ("trim_threshold", _M_TRIM_THRESHOLD),
    ):
        if libc.mallopt(option, settings[name]) != 1:
            raise RuntimeError(
                f"configure_malloc: glibc's mallopt refused {name}="
                f"{settings[name]}. Leave malloc alone by not calling "
                "configure_malloc, or set GLIBC_TUNABLES yourself."
            )
    return settings


def _switched_on():
    """`KERAS_PCL_CONFIGURE_MALLOC`: "1" (the default) or "0" (leave it)."""
    value = os.environ.get(SWITCH, "1").strip().lower()
    if value not in ("0", "1", "false", "true"):
        raise ValueError(
            f"The environment variable {SWITCH} must be '1' (configure "
            f"glibc's malloc) or '0' (leave it alone). Received: {value!r}"
        )
    return value in ("1", "true")


def _chosen_already():
    """Whether the environment already sets glibc's malloc or replaces it."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    if any(name in os.environ for name in _MALLOC_ENV):
        return True
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in _OTHER_ALLOCATORS)


def _glibc():
    """The C library with `mallopt`, if this process runs on glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # Not Linux, or not glibc.
        return None
    if not version or not version.startswith("glibc"):
        return None
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


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
    number stays bitwise the same (`tests/process_test.py`); only how many
    ops run at once changes.

    Measured on a 2-core VM (CIFAR ResNet-32, `m = 3`, batch 128,
    `benchmarks/vs_pytorch.py`, alternating runs): PCL steps 1.01-1.12x
    faster than with TensorFlow's default pool of 2 threads (four runs;
    the most when the VM ran slowest), never slower.

    Example:

    ```python
    import keras_pcl.process

    keras_pcl.process.configure_tensorflow_threads(num_peers=3)  # First.
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
    check_int("num_peers", num_peers, minimum=1)
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


def configure(num_branches):
    """Applies the measured settings for training; returns what it set.

    `configure_tensorflow_threads(num_branches)` and `configure_malloc()`.
    Where TensorFlow already runs an op (a notebook, a test), its pools are
    fixed and stay as they are. The caller says what was set, in one line.

    Example:

    ```python
    import keras_pcl.process

    branches = keras_pcl.process.parallel_branches("pcl", num_peers=3)
    print(keras_pcl.process.configure(branches))  # First.
    ```

    Args:
        num_branches: int >= 1, the networks a training step runs side by
            side (`parallel_branches(method, num_peers)`).

    Returns:
        One line, `"process settings: ..."`: what was set, or that nothing
        was needed here.

    Raises:
        ValueError: a bad `num_branches` or `KERAS_PCL_CONFIGURE_MALLOC`.
        RuntimeError: glibc refused a malloc setting.
    """
    try:
        pool = configure_tensorflow_threads(num_branches)
    except RuntimeError:
        pool = None  # TensorFlow runs already: its pools are fixed.
    malloc = configure_malloc()
    settings = []
    if pool:
        settings.append(f"TensorFlow inter-op threads = {pool}")
    if malloc:
        settings.append(
            "glibc malloc keeps freed memory (mmap_threshold="
            f"{malloc['mmap_threshold']}, trim_threshold={malloc['trim_threshold']})"
        )
    return "process settings: " + ("; ".join(settings) or "none needed here")
