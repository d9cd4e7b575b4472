"""glibc's malloc set to keep a PCL step's freed activations for the next step.

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
number (`tests/allocator_test.py` trains bitwise the same).

No library does this for a Python process (PyTorch's CPU caching allocator
is for mobile builds only), so it is written here: one `mallopt` call per
threshold through `ctypes`. It is process-wide, like an environment
variable, so it is a function a script calls (the `keras-pcl` command and
the example scripts do), not something a model does for itself. The same
settings can be given before Python starts with
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=...`.
"""

import ctypes
import os

import keras

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
    import keras_pcl

    keras_pcl.allocator.configure_malloc()  # Before training.
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
