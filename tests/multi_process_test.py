"""Two JAX processes train like one: the step, the data shards, the one writer.

The two-process tests start fresh processes (`tests/multi_process_step.py`,
`tests/resumable_run.py`) that talk over 127.0.0.1 only, on a port picked
by binding port 0; every process has a timeout and they stop by
themselves. JAX only: Keras 3.15 has no multi-process path on TensorFlow
or torch (docs/performance.md; `keras_pcl/training/cluster.py`), whose
refusals are tested in tests/training_test.py.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest

import keras_pcl  # noqa: F401  (registers the models that pcl.keras holds)
from tests.testing import float32_atol
from tests.testing import kd_magnitude
from tests.testing import sgd_weights_atol

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_SCRIPT = os.path.join(HERE, "multi_process_step.py")
BACKUP_FILES = [
    "latest.weights.h5",
    "latest.weights.h5.bkp",
    "training_metadata.json",
    "training_metadata.json.bkp",
]

jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="Several processes train on JAX only (see docs/performance.md)",
)


def free_address():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def environment():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    env.pop("XLA_FLAGS", None)  # One CPU device per process.
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "TF_CONFIG"):
        env.pop(name, None)
    return env


def run_together(commands, timeout, stop_all_when_one_dies=False):
    """Runs `commands` at once; their `(returncode, stdout, stderr)`.

    A process still running after `timeout` seconds is killed (its
    return code is then -9), so that a hung collective cannot hang the
    suite. With `stop_all_when_one_dies`, the others are killed 10 s after
    the first one ends with an error, as a cluster manager stops a job
    (JAX would otherwise wait for the lost process up to its shutdown
    timeout, 5 min).
    """
    # Files, not pipes: a process that is not read from never blocks.
    logs = [
        (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in commands
    ]
    processes = [
        subprocess.Popen(
            [str(a) for a in command], env=environment(), stdout=out, stderr=err
        )
        for command, (out, err) in zip(commands, logs)
    ]
    if stop_all_when_one_dies:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes):
                time.sleep(10)
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                break
            time.sleep(0.5)
    results = []
    for process, files in zip(processes, logs):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            process.wait()
        texts = []
        for f in files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        results.append((process.returncode, *texts))
    return results


# 46 s on 2 CPU cores: the two workers together (~35 s, each compiles the
# step), then the single process (~12 s).
@jax_only
def test_two_processes_take_the_single_process_steps_on_disjoint_shards(tmp_path):
    address = free_address()
    workers = run_together(
        [
            [sys.executable, STEP_SCRIPT, "worker", tmp_path / f"w{i}.npz", address, i]
            for i in range(2)
        ],
        timeout=240,
    )
    for i, (code, _, err) in enumerate(workers):
        assert code == 0, f"process {i}: {err[-3000:]}"
    [(code, _, err)] = run_together(
        [[sys.executable, STEP_SCRIPT, "single", tmp_path / "single.npz"]],
        timeout=240,
    )
    assert code == 0, err[-3000:]
    single = np.load(tmp_path / "single.npz")
    parts = [np.load(tmp_path / f"w{i}.npz") for i in range(2)]

    # The data: each process fed half of every global batch, process 0 the
    # first half; the halves are disjoint and together they are the
    # single-process batches (2 steps of 8 out of 20 examples).
    halves = [p["fed_images"] for p in parts]
    assert halves[0].shape == halves[1].shape == (2, 4, 8, 8, 3)
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), single["fed_images"])
    np.testing.assert_array_equal(
        np.concatenate([p["fed_labels"] for p in parts], axis=1), single["fed_labels"]
    )
    rows = {h.tobytes() for p in halves for h in p.reshape(-1, 8 * 8 * 3)}
    assert len(rows) == 16  # No example fed twice.
    # Validation: 7 examples, one batch of the 6 that 2 devices can split.
    np.testing.assert_array_equal(
        np.concatenate([p["validation_labels"] for p in parts]),
        single["validation_labels"],
    )

    # The step: the same math with the gradients all-reduced over gloo, so
    # the float32 tolerances of two replicas in one process (see
    # tests/distribution_test.py): ulps of the magnitudes summed. Measured:
    # 7e-7 on pe (atol 5.6e-5), weights within 1e-6.
    kd = kd_magnitude(temperature=3.0, num_classes=3, num_terms=3)
    ce = np.max(np.abs(single["log_ce"]))
    magnitudes = {"loss": ce + 2 * kd, "ce": ce, "pe": kd, "pm": kd}
    val_ce = np.max(np.abs(single["log_val_ce"]))
    magnitudes.update(
        {"val_loss": val_ce + 2 * kd, "val_ce": val_ce, "val_pe": kd, "val_pm": kd}
    )
    for part in parts:
        for key, magnitude in magnitudes.items():
            np.testing.assert_allclose(
                part[f"log_{key}"],
                single[f"log_{key}"],
                rtol=0,
                atol=float32_atol(magnitude, k=8),
                err_msg=key,
            )
        for key in single.files:
            if key.startswith("log_") and key.endswith("accuracy"):
                np.testing.assert_array_equal(part[key], single[key], err_msg=key)
    names = [k[len("weight_") :] for k in single.files if k.startswith("weight_")]
    assert any("mean_teacher" in n for n in names)
    assert any("pcl_step" in n for n in names)
    assert any("best_peer" in n for n in names)
    for name in names:
        expected = single[f"weight_{name}"]
        # Both processes start from the same initialisation (seeded).
        for part in parts:
            np.testing.assert_array_equal(
                part[f"initial_weight_{name}"], single[f"initial_weight_{name}"]
            )
        # ...and hold the same replicated weights after the steps.
        np.testing.assert_array_equal(
            parts[0][f"weight_{name}"], parts[1][f"weight_{name}"], err_msg=name
        )
        if expected.ndim == 0:  # Step counter, best-peer record: exact.
            np.testing.assert_array_equal(parts[0][f"weight_{name}"], expected, name)
            continue
        np.testing.assert_allclose(
            parts[0][f"weight_{name}"],
            expected,
            rtol=0,
            atol=sgd_weights_atol(
                expected, single[f"initial_weight_{name}"], summed_terms=8 * 8 * 8
            ),
            err_msg=name,
        )


def train_command(data, workdir, address, process_id):
    return [sys.executable, STEP_SCRIPT, "train", data, workdir, address, process_id]


def final_weights(workdir):
    model = keras.saving.load_model(os.path.join(workdir, "pcl.keras"))
    return {w.path: np.array(v) for w, v in zip(model.weights, model.get_weights())}


# 90-120 s on 2 CPU cores: two processes trained without a break, then two
# killed at step 7 and two relaunched (each run compiles ResNet-8's step).
@jax_only
def test_two_processes_killed_resume_from_the_shared_backup(tmp_path):
    from tests.examples.quickstart_test import write_image_folder

    data = tmp_path / "images"
    write_image_folder(str(data), classes=3, per_class=12, size=8)
    # What the job would have trained had nothing died: the same two
    # processes, the same reduction order.
    uninterrupted = tmp_path / "uninterrupted"
    address = free_address()
    for i, (code, _, err) in enumerate(
        run_together(
            [train_command(data, uninterrupted, address, i) for i in range(2)],
            timeout=300,
        )
    ):
        assert code == 0, f"process {i}: {err[-3000:]}"

    # Process 1 dies (SIGKILL) after global step 7, mid-epoch 2; process 0
    # loses its peer in the next step's all-reduce. Like a cluster manager,
    # the test then stops what is left of the job and starts it again.
    workdir = tmp_path / "two"
    address = free_address()
    killed = run_together(
        [
            train_command(data, workdir, address, 0),
            train_command(data, workdir, address, 1) + [7],
        ],
        timeout=240,
        stop_all_when_one_dies=True,
    )
    assert killed[1][0] == -signal.SIGKILL, killed[1][2][-3000:]
    assert killed[0][0] != 0  # Lost its peer (or was stopped with the job).
    assert not (workdir / "pcl.keras").exists()
    # Only process 0 wrote: one config, one backup (and the previous one).
    assert sorted(os.listdir(workdir / "backup")) == sorted(BACKUP_FILES)

    address = free_address()
    resumed = run_together(
        [train_command(data, workdir, address, i) for i in range(2)], timeout=300
    )
    steps = []
    for i, (code, out, err) in enumerate(resumed):
        assert code == 0, f"process {i}: {err[-3000:]}"
        [line] = [line for line in out.splitlines() if line.startswith("initial")]
        steps.append([int(v) for v in line.split()[1::2]])
    # Both restored the last backup (every 2 steps: step 6, mid-epoch 2)
    # and trained to the end: nothing lost, nothing twice.
    assert steps == [[6, 10], [6, 10]], steps

    # The resume is exact: every weight, mean teachers and moving statistics
    # included, is bitwise what the uninterrupted job trained (same
    # processes, same order of every sum). That two processes take the
    # single-process steps is test_two_processes_take_the_single_process_
    # steps_on_disjoint_shards'; comparing with one process here let ten
    # steps amplify the reduction-order ulps past any fixed tolerance.
    expected = final_weights(uninterrupted)
    actual = final_weights(workdir)
    assert expected.keys() == actual.keys()
    assert any("mean_teacher" in k for k in expected)
    assert any("moving_variance" in k for k in expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("host_augmentation", [False, True])
def test_each_process_streams_its_part_of_every_global_batch(host_augmentation):
    """The processes' parts are disjoint, in order, and the same views (tf.data)."""
    import tensorflow as tf

    from keras_pcl import training
    from tests.testing import colour_dataset

    images, labels = colour_dataset(22, seed=2)
    examples = tf.data.Dataset.from_tensor_slices((images, labels))
    config = training.TrainConfig(
        dataset="colours",
        batch_size=6,
        epochs=2,
        num_peers=2,
        host_augmentation=host_augmentation,
    )

    def batches(**shard):
        stream = training.training_stream(examples, config, 3, **shard)
        return list(stream.as_numpy_iterator())

    whole = batches()
    parts = [batches(num_processes=3, process_index=i) for i in range(3)]
    assert len(whole) == 6 and all(len(p) == 6 for p in parts)  # 2 epochs x 3
    for step, batch in enumerate(whole):
        # Each process: 2 consecutive rows of the 6, views and labels.
        joined = [p[step] for p in parts]
        for leaf, *pieces in zip(
            tf.nest.flatten(batch), *(tf.nest.flatten(j) for j in joined)
        ):
            assert all(len(piece) == 2 for piece in pieces)
            np.testing.assert_array_equal(np.concatenate(pieces), leaf)


def test_distribution_shard_splits_every_batch_evenly():
    import tensorflow as tf

    from keras_pcl import training

    rows = tf.data.Dataset.range(10).batch(4)  # 4, 4 and a last batch of 2
    parts = [
        [
            list(b)
            for b in training.Distribution("auto", 2, num_processes=2, process_index=i)
            .shard(rows)
            .as_numpy_iterator()
        ]
        for i in range(2)
    ]
    assert parts == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9]]]
    assert training.Distribution("cpu", 1).shard(rows) is rows
