"""`keras_pcl.process`: settings for whoever owns the process; the library's
own import and `fit` leave the process alone."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_pcl import process
from tests.testing import assert_trained_bitwise_alike
from tests.testing import run_npz_script

BACKEND = keras.backend.backend()
LIBRARY_SCRIPT = os.path.join(os.path.dirname(__file__), "library_fit_step.py")
# The environment variables that importing Keras and TensorFlow changes.
KERAS_ALONE = """
import json, os
before = dict(os.environ)
import keras, tensorflow
after = dict(os.environ)
print(json.dumps(sorted(k for k in set(after) | set(before)
                        if after.get(k) != before.get(k))))
"""


def test_importing_and_fitting_leave_the_process_as_they_found_it(tmp_path):
    """A fresh process: `import keras_pcl` (with argv[0] = keras-pcl), then fit.

    Nothing the library does may redirect descriptor 2, size TensorFlow's
    (or torch's) thread pools or set an environment variable: those belong
    to the script that owns the process (`keras_pcl.process`).

    A fresh process (TensorFlow's import, one traced step: 15-30 s here)
    on every backend, since what `fit` runs, and so what it could change,
    differs per backend (tests/ci_budget.py).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # The old `import keras_pcl` set it.
    out = tmp_path / "state.npz"
    result = subprocess.run(
        [sys.executable, LIBRARY_SCRIPT, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = np.load(out)
    assert list(state["redirected_fds"]) == []  # No `os.dup2` onto any fd.
    fd2 = state["fd2_before"].tolist()
    assert state["fd2_imported"].tolist() == fd2
    assert state["fd2_fitted"].tolist() == fd2
    # TensorFlow's defaults (0: one thread per core), unchanged by `fit`.
    assert state["pools_imported"].tolist()[:2] == [0, 0]
    assert state["pools_fitted"].tolist() == state["pools_imported"].tolist()
    # Keras and the backends set a few variables when imported (JAX sets
    # TF_CPP_MIN_LOG_LEVEL, for one): the library adds none, on import or
    # in `fit`.
    keras_alone = subprocess.run(
        [sys.executable, "-c", KERAS_ALONE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert keras_alone.returncode == 0, keras_alone.stderr[-3000:]
    assert state["environ_imported"].tolist() == json.loads(keras_alone.stdout)
    assert state["environ_fitted"].tolist() == state["environ_imported"].tolist()


def test_the_library_no_longer_offers_process_settings():
    import keras_pcl

    for name in ("allocator", "threads"):
        with pytest.raises(AttributeError, match="moved to `keras_pcl.process`"):
            getattr(keras_pcl, name)


def test_configure_says_what_it_set(monkeypatch):
    monkeypatch.setattr(process, "configure_tensorflow_threads", lambda n: n)
    monkeypatch.setattr(
        process,
        "configure_malloc",
        lambda: {"mmap_threshold": 1, "trim_threshold": 2},
    )
    line = process.configure(3)
    assert line == (
        "process settings: TensorFlow inter-op threads = 3; glibc malloc keeps "
        "freed memory (mmap_threshold=1, trim_threshold=2)"
    )
    monkeypatch.setattr(process, "configure_tensorflow_threads", lambda n: None)
    monkeypatch.setattr(process, "configure_malloc", lambda: None)
    assert process.configure(3) == "process settings: none needed here"


# ---------------------------------------------------------------------------
# glibc's malloc keeps freed activations; the same numbers.
# ---------------------------------------------------------------------------

MALLOC_SCRIPT = os.path.join(os.path.dirname(__file__), "malloc_step.py")
GLIBC = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
torch_on_glibc = pytest.mark.skipif(
    BACKEND != "torch" or not (GLIBC or "").startswith("glibc"),
    reason="glibc's malloc under the torch backend",
)


@pytest.mark.skipif(BACKEND == "torch", reason="other backends")
def test_other_backends_are_left_alone():
    assert process.configure_malloc() is None


@torch_on_glibc
@pytest.mark.parametrize(
    "name, value",
    [
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576"),
        ("MALLOC_TRIM_THRESHOLD_", "1048576"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_settings_chosen_in_the_environment_are_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert process.configure_malloc() is None


@pytest.mark.parametrize("value", ["0", "false", " 0 "])
def test_the_switch_leaves_malloc_alone(monkeypatch, value):
    monkeypatch.setenv("KERAS_PCL_CONFIGURE_MALLOC", value)
    assert process.configure_malloc() is None


@pytest.mark.parametrize("value", ["off", "2", ""])
def test_a_bad_switch_value_is_an_error_that_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("KERAS_PCL_CONFIGURE_MALLOC", value)
    with pytest.raises(ValueError, match="KERAS_PCL_CONFIGURE_MALLOC must be '1'"):
        process.configure_malloc()


@pytest.mark.skipif(BACKEND != "torch", reason="torch backend")
def test_a_setting_glibc_refuses_is_an_error_that_names_it(monkeypatch):
    # Whether glibc refuses a value depends on its version (2.36 takes an
    # mmap threshold above the documented 32 MiB limit), so a stand-in C
    # library refuses here: what is checked is the message, not glibc.
    class RefusingLibc:
        def mallopt(self, option, value):
            return 0

    for name in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(process, "_glibc", RefusingLibc)
    with pytest.raises(RuntimeError, match="refused mmap_threshold=33554432"):
        process.configure_malloc()


@torch_on_glibc
def test_configured_malloc_trains_bitwise_the_same_without_page_faults(tmp_path):
    """Two fresh processes train a ResNet-8 PCL model: configured vs glibc's own.

    Only where freed memory goes changes, so every weight (students, mean
    teachers, moving statistics) and every log must be bitwise equal. Page
    faults are counted, not timed, as the median over the last five of ten
    steps (the first steps grow the heap either way: CI once counted 2,692
    per configured step over steps 3-4). By default glibc hands its freed
    activations back to the kernel and takes them again page by page
    (14,000-17,000 faults per step here); with the thresholds set the heap
    keeps them (2-3 per step, a few hundred for the odd new block). The
    factor of 10 asked is far below the thousands measured.
    """
    if process._chosen_already() or not process._switched_on():
        pytest.skip("this environment sets glibc's malloc, or says to leave it")
    configured = run_npz_script(MALLOC_SCRIPT, tmp_path / "c.npz", args=["configure"])
    default = run_npz_script(MALLOC_SCRIPT, tmp_path / "d.npz")
    assert bool(configured["configured"]) and not bool(default["configured"])
    assert_trained_bitwise_alike(configured, default)
    faults = float(configured["page_faults_per_step"])
    default_faults = float(default["page_faults_per_step"])
    assert default_faults > 5000, default_faults  # 1-4 MiB blocks, 4 KiB pages.
    assert faults < default_faults / 10, (faults, default_faults)


@pytest.mark.skipif(BACKEND != "torch", reason="torch backend")
def test_another_c_library_is_left_alone(monkeypatch):
    for name in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(process.os, "confstr", lambda name: None)  # e.g. musl
    assert process.configure_malloc() is None


# ---------------------------------------------------------------------------
# A larger TensorFlow inter-op pool; the same numbers.
# ---------------------------------------------------------------------------

THREADS_SCRIPT = os.path.join(os.path.dirname(__file__), "threaded_step.py")
CORES = len(os.sched_getaffinity(0))
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow's thread pools"
)


@pytest.mark.parametrize("num_peers", [0, -1, 2.0, True, "3"])
def test_a_bad_num_peers_is_refused(num_peers):
    with pytest.raises(ValueError, match="`num_peers` must be an int >= 1"):
        process.configure_tensorflow_threads(num_peers)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="other backends")
def test_other_backends_keep_their_thread_pools():
    assert process.configure_tensorflow_threads(CORES + 1) is None


@tensorflow_only
def test_enough_cores_or_a_chosen_pool_is_left_alone(monkeypatch):
    keras.ops.ones(())  # TensorFlow runs: any change would now raise.
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    assert process.configure_tensorflow_threads(CORES) is None
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "2")
    assert process.configure_tensorflow_threads(CORES + 1) is None


@tensorflow_only
def test_too_late_is_an_error_that_says_when_to_call_it(monkeypatch):
    keras.ops.ones(())  # TensorFlow has run an op in this process.
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    with pytest.raises(RuntimeError, match="before building any model"):
        process.configure_tensorflow_threads(CORES + 1)


@tensorflow_only
def test_the_configured_pool_trains_bitwise_the_same(tmp_path):
    """Two PCL steps in two fresh processes: the pool set vs TensorFlow's own.

    Only how many ops run at once differs; each op splits its sums over the
    same intra-op pool, so every weight and log must be bitwise equal.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_NUM_INTEROP_THREADS", None)
    outs = {name: tmp_path / f"{name}.npz" for name in ("configured", "default")}
    runs = {
        name: subprocess.Popen(
            [sys.executable, THREADS_SCRIPT, str(out)]
            + (["configure"] if name == "configured" else []),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, out in outs.items()
    }
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}: {stderr[-3000:]}"
    configured, default = (np.load(outs[n]) for n in ("configured", "default"))
    assert int(configured["configured"]) == CORES + 1
    assert int(configured["inter_op"]) == CORES + 1
    assert int(default["inter_op"]) == 0  # TensorFlow's default pool.
    assert_trained_bitwise_alike(configured, default)
