"""What each part of a PCL training step costs (issue #30).

Times, on one backend (TensorFlow: each part in a `tf.function`; torch:
eager), for CIFAR ResNet-`--depth`, `m = --num_peers`, batch `--batch_size`:

* `step_<method>`: a whole training step (`train_on_batch`) of vanilla,
  PCL, the ablation without mean-teacher distillation
  (`pcl_no_mean_teachers`) and `pcl_lean` (the same ablation without the
  mean teachers' forward passes in training);
* `mean_teacher_forward`: the three mean teachers' training-mode forward
  passes, each on its own view (what `pcl_lean` skips);
* `ema`: the mean-teacher update of every averaged variable;
* `ensemble_forward`: the ensemble classifier on the concatenated features.

Every part is timed `--repeats` times over `--steps` calls, alternating
between parts, after one untimed warm-up; medians. Steps are in seconds and
as multiples of vanilla's step, both in wall-clock and in the process's CPU
time (`time.process_time`): run single-threaded (the variables below), the
CPU time of a step is what it computes, and is far less inflated than the
wall-clock by other processes on a shared machine. ONE's step is timed too
(`benchmarks/cost.py` reads the steps' CPU-time ratios from the JSON).

Usage:

    OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
    KERAS_BACKEND=tensorflow python benchmarks/pcl_step_parts.py \\
        --json benchmarks/results/pcl_step_parts_tensorflow.json
"""

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 8, "CIFAR ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("num_peers", 3, "PCL peers.")
flags.DEFINE_integer("steps", 8, "Calls per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs per part (median).")
flags.DEFINE_string("json", None, "Write the results here.")

METHODS = ("vanilla", "one", "pcl", "pcl_no_mean_teachers", "pcl_lean")


def _compiled(function):
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    return function


def _sync(value):
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.cuda.synchronize() if torch.cuda.is_available() else None
    return value


def parts():
    """`{name: callable}` of the timed parts."""
    import keras
    import numpy as np

    import keras_pcl
    from keras_pcl.mean_teacher import update_mean_teacher
    from keras_pcl.methods import build_method

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (FLAGS.batch_size, 32, 32, 3)).astype("uint8")
    y = rng.integers(0, 10, (FLAGS.batch_size,)).astype("int32")
    models = {}
    for name in METHODS:
        keras.utils.set_random_seed(0)
        model = build_method(
            name,
            keras_pcl.backbones.CIFARResNet(depth=FLAGS.depth),
            10,
            num_peers=FLAGS.num_peers,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        models[name] = model
    timed = {
        f"step_{n}": (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()
    }

    pcl = models["pcl"]
    views = pcl.peer_views(keras.ops.convert_to_tensor(x), training=True)

    def teachers():
        trunk = pcl.apply_per_view(pcl.mean_teacher_trunk, views, True)
        return [
            pcl.apply_layer(c, pcl.apply_layer(h, trunk[j], True), True)
            for j, (h, c) in enumerate(
                zip(pcl.mean_teacher_heads, pcl.mean_teacher_classifiers)
            )
        ]

    students, averaged = pcl._ema_pairs

    def ema():
        update_mean_teacher(students, averaged, 10, pcl.ema_decay, fast=pcl._fast_paths)
        return averaged[0].value

    features = keras.ops.convert_to_tensor(
        rng.normal(size=(FLAGS.batch_size, pcl.feature_dim * FLAGS.num_peers)).astype(
            "float32"
        )
    )
    timed["mean_teacher_forward"] = _compiled(teachers)
    timed["ema"] = _compiled(ema)
    timed["ensemble_forward"] = _compiled(lambda: pcl.ensemble_classifier(features))
    return timed


def main(argv):
    del argv
    import keras

    timed = parts()
    for fn in timed.values():  # Warm-up: tracing, first allocations.
        _sync(fn())
        _sync(fn())
    runs = {name: [] for name in timed}
    cpu_runs = {name: [] for name in timed}
    for _ in range(FLAGS.repeats):
        for name, fn in timed.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(FLAGS.steps):
                out = fn()
            _sync(out)
            runs[name].append((time.perf_counter() - start) / FLAGS.steps)
            cpu_runs[name].append((time.process_time() - cpu_start) / FLAGS.steps)
    vanilla = statistics.median(runs["step_vanilla"])
    vanilla_cpu = statistics.median(cpu_runs["step_vanilla"])
    results = {}
    print(
        f"{'part':28s} {'wall s':>9s} {'x vanilla':>10s}"
        f" {'CPU s':>9s} {'x vanilla':>10s}"
    )
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        cpu = statistics.median(cpu_runs[name])
        results[name] = {
            "seconds": median,
            "vanilla_steps": median / vanilla,
            "runs": seconds,
            "cpu_seconds": cpu,
            "cpu_vanilla_steps": cpu / vanilla_cpu,
            "cpu_runs": cpu_runs[name],
        }
        print(
            f"{name:28s} {median:9.4f} {median / vanilla:10.2f} {cpu:9.4f} "
            f"{cpu / vanilla_cpu:10.2f}"
        )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(
                {
                    "backend": keras.backend.backend(),
                    "depth": FLAGS.depth,
                    "batch_size": FLAGS.batch_size,
                    "num_peers": FLAGS.num_peers,
                    "steps": FLAGS.steps,
                    "repeats": FLAGS.repeats,
                    "threads_env": {
                        k: os.environ.get(k)
                        for k in (
                            "OMP_NUM_THREADS",
                            "TF_NUM_INTRAOP_THREADS",
                            "TF_NUM_INTEROP_THREADS",
                        )
                    },
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "parts": results,
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
