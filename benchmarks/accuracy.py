"""Accuracy of PCL against the online-distillation baselines on real CIFAR-10.

Every method trains the same backbone on the same images with the same
schedule, optimizer, augmentation and code (`keras_pcl.training.build_model`
and `compile_model`, the recipe of `keras-pcl train --method=...`), and is
scored on a fixed, class-balanced validation split of the CIFAR-10 image
folder that no method trains on (`keras_pcl.data.list_image_folder`, seed 0:
500 images per class). Selection rule, the same for every method: at the end
of training, the deployable network with the best validation accuracy
(PCL: a peer's mean teacher; OKDDip: its group leader; DML, KDCL, ONE,
CL-ILR: a peer; vanilla: the network) is the deployed one; its final-epoch
accuracy is reported. Nothing is tuned on anything but this split.

Default protocol (sized for a 2-core CPU: about an hour per seed for the
core methods, see `benchmarks/README.md`): CIFAR ResNet-8, a class-balanced
subset of 5,000 training images (500 per class), 30 epochs, batch 128,
SGD (Nesterov, momentum 0.9, lr 0.1 divided by 10 at 50% and 75% of
training), L2 5e-4 on the convolution kernels, 3 peers, T = 3, the ramp-up
over the first 80/300 of training as in the paper, mean-teacher decay 0.99
(0.999 averages over ~1,000 steps: longer than a short run). The paper's
recipe is `--backbone=resnet32 --train_images=0 --epochs=300
--ema_decay=0.999`.

Every finished run is appended to `<output_dir>/<tag>_runs.jsonl`, so an
interrupted benchmark resumes where it stopped and several machines can
share the work. The report (`<tag>.md`, `<tag>.png`, `<tag>.json`) is
rewritten after every run.

Usage:

    KERAS_BACKEND=torch python benchmarks/accuracy.py --tag=accuracy_cpu \
        --export_dir=/tmp/deployed
    python benchmarks/accuracy.py --report_only --tag=accuracy_cpu
    # Without TensorFlow (e.g. a GPU machine with JAX only): write the images
    # once where TensorFlow is installed, then train from the bundle.
    python benchmarks/accuracy.py --write_bundle=/tmp/cifar10.npz
    KERAS_BACKEND=jax python benchmarks/accuracy.py --bundle=/tmp/cifar10.npz
"""

import io
import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags

from keras_pcl import process
from keras_pcl.methods import METHODS
from keras_pcl.training import JIT_COMPILE
from keras_pcl.training import MIXED_PRECISION

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_DATA = os.path.join(
    os.path.dirname(_ROOT), "shared", "data", "cifar10", "train"
)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", _DEFAULT_DATA, "CIFAR-10 image folder.")
flags.DEFINE_string(
    "bundle",
    None,
    "Read the split images from this file (written by --write_bundle) "
    "instead of --data_dir; needs no TensorFlow.",
)
flags.DEFINE_string(
    "write_bundle", None, "Write the split's encoded images to this file and exit."
)
flags.DEFINE_integer("validation_images", 5000, "Held-out images (balanced).")
flags.DEFINE_integer(
    "train_images", 5000, "Balanced training subset; 0: every training image."
)
flags.DEFINE_list(
    "methods",
    list(METHODS),
    f"Methods to train, from {list(METHODS)}, or 'all'.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each method runs once per seed.")
flags.DEFINE_string("backbone", "resnet8", "resnetD (D = 6n+2) or a built-in name.")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate.")
flags.DEFINE_float("weight_decay", 5e-4, "PyTorch-style SGD weight decay (as L2).")
flags.DEFINE_integer("num_peers", 3, "Peers / branches / networks.")
flags.DEFINE_float("ema_decay", 0.99, "PCL mean-teacher decay.")
flags.DEFINE_float(
    "rampup_fraction", 80 / 300, "Ramp-up length as a fraction of training."
)
flags.DEFINE_enum("jit_compile", "auto", list(JIT_COMPILE), "XLA (`jit_compile`).")
flags.DEFINE_enum(
    "mixed_precision",
    "none",
    list(MIXED_PRECISION),
    "Keras dtype policy of every method's networks: none (float32), "
    "float16 (mixed_float16, loss-scaled) or bfloat16 (mixed_bfloat16), as "
    "`keras-pcl train --mixed_precision`; use another --tag for each.",
)
flags.DEFINE_integer(
    "validation_freq",
    1,
    "Validate every N epochs (N must divide --epochs, so that the final "
    "epoch, which selects the deployed network, is validated). Validation "
    "does not change training; a larger N saves time on long schedules.",
)
flags.DEFINE_string("output_dir", os.path.join(_ROOT, "benchmarks", "results"), "")
flags.DEFINE_string("tag", "accuracy_cpu", "Prefix of the files written.")
flags.DEFINE_string("export_dir", None, "Save each deployed network here (.keras).")
flags.DEFINE_bool("report_only", False, "Only rebuild the report from the runs.")
flags.DEFINE_string(
    "step_cost_json",
    None,
    "A `benchmarks/throughput.py --models=all` JSON of the same backbone "
    "and batch, measured side by side on an idle machine: the report's "
    "compute column then reads each method's step time over vanilla's "
    "from it (the runs' own epoch times are slowed by whatever else ran).",
)
flags.DEFINE_string(
    "backup_dir",
    None,
    "Back each run up here after every epoch (keras.callbacks."
    "BackupAndRestore): a run killed mid-way resumes at its last finished "
    "epoch instead of from scratch (its record then says "
    "`resumed_at_epoch`; the data order after the resumption differs from "
    "an uninterrupted run's). The backup is deleted when the run finishes.",
)
flags.DEFINE_float(
    "time_budget",
    0,
    "Stop starting new runs after this many seconds (0: no limit).",
)


# ----------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------


def split_files():
    """Paths and labels of the training subset and the validation split."""
    import numpy as np

    from keras_pcl.data import balanced_split
    from keras_pcl.data import list_image_folder

    total = sum(len(files) for _, _, files in os.walk(FLAGS.data_dir))
    listing = list_image_folder(
        FLAGS.data_dir, validation_split=FLAGS.validation_images / total, seed=0
    )
    train_paths, train_labels = listing.train_paths, listing.train_labels
    if FLAGS.train_images and FLAGS.train_images < len(train_paths):
        _, subset = balanced_split(
            train_labels, FLAGS.train_images / len(train_paths), seed=1
        )
        train_paths, train_labels = train_paths[subset], train_labels[subset]
    return (
        np.asarray(train_paths),
        np.asarray(train_labels),
        np.asarray(listing.validation_paths),
        np.asarray(listing.validation_labels),
        listing.class_names,
    )


def _read(paths):
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def write_bundle(path):
    import numpy as np

    train_paths, train_labels, val_paths, val_labels, names = split_files()
    np.savez(
        path,
        train_jpeg=np.array(_read(train_paths), dtype=object),
        train_labels=train_labels,
        validation_jpeg=np.array(_read(val_paths), dtype=object),
        validation_labels=val_labels,
        class_names=np.array(names),
    )
    print(f"wrote {path}: {len(train_paths)} training, {len(val_paths)} validation")


def _decode(encoded):
    """Decodes encoded images with Pillow (Keras' `load_img` backend)."""
    import numpy as np
    from PIL import Image

    return np.stack(
        [np.asarray(Image.open(io.BytesIO(e)).convert("RGB")) for e in encoded]
    )


def load_arrays():
    """`(x_train, y_train, x_val, y_val)` as uint8 / int32 arrays."""
    import numpy as np

    if FLAGS.bundle:
        bundle = np.load(FLAGS.bundle, allow_pickle=True)
        return (
            _decode(bundle["train_jpeg"]),
            bundle["train_labels"].astype("int32"),
            _decode(bundle["validation_jpeg"]),
            bundle["validation_labels"].astype("int32"),
        )
    train_paths, train_labels, val_paths, val_labels, _ = split_files()
    return (
        _decode(_read(train_paths)),
        train_labels.astype("int32"),
        _decode(_read(val_paths)),
        val_labels.astype("int32"),
    )


# ----------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------


class _TrainTimer:
    """Seconds of each epoch's training part (validation excluded)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_test_begin(self, logs=None):
                if len(self.seconds) < len(self.model.history.epoch) + 1:
                    self.seconds.append(time.perf_counter() - self._start)

        return Timer()


def run_config(method, seed):
    """The benchmark's protocol as a `keras_pcl.training.TrainConfig`.

    The model and its optimiser are then built by the training package's
    own `build_model` and `compile_model`, so that the benchmark trains what
    `keras-pcl train --method=...` trains.
    """
    from keras_pcl import training

    config = training.TrainConfig(
        dataset="cifar10",  # In-model augmentation: pad 4, crop, flip.
        method=method,
        backbone=FLAGS.backbone,
        num_peers=FLAGS.num_peers,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        lr=FLAGS.learning_rate,
        # The schedule as fractions of --epochs, as `keras-pcl train` has it
        # (`training.config.run_schedule`): drops at 50% and 75% (the default
        # `lr_decay_fractions`), the ramp-up over --rampup_fraction.
        weight_decay=FLAGS.weight_decay,
        temperature=None,  # Each method's own (KDCL: 4).
        ema_decay=FLAGS.ema_decay,
        rampup_fraction=FLAGS.rampup_fraction,
        seed=seed,
        jit_compile=FLAGS.jit_compile,
        mixed_precision=FLAGS.mixed_precision,
    )
    config.validate()
    return config


def deployable(model):
    """`[(peer index, validation log key)]` of the networks a method deploys."""
    metric = "mean_teacher" if model.has_mean_teachers else "peer"
    return [(j, f"val_{metric}_{j}_accuracy") for j in model.deployable_peers]


def run_one(method, seed, data):
    import keras

    from keras_pcl import training

    x_train, y_train, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    config = run_config(method, seed)
    steps_per_epoch = len(x_train) // FLAGS.batch_size
    # Preprocessing: each method's default rescaling to [0, 1].
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(training.dtype_policy_name(config.mixed_precision))
    try:
        model = training.build_model(
            config, tuple(x_train.shape[1:]), 10, steps_per_epoch
        )
    finally:
        keras.config.set_dtype_policy(policy)
    training.compile_model(model, config, steps_per_epoch)
    timer = _TrainTimer()
    callbacks = [timer]
    if FLAGS.backup_dir:
        backup = os.path.join(FLAGS.backup_dir, f"{FLAGS.tag}_{method}_seed{seed}")
        callbacks.append(keras.callbacks.BackupAndRestore(backup, save_freq="epoch"))
    start = time.perf_counter()
    history = model.fit(
        x_train[: steps_per_epoch * FLAGS.batch_size],
        y_train[: steps_per_epoch * FLAGS.batch_size],
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        validation_data=(x_val, y_val),
        validation_freq=FLAGS.validation_freq,
        callbacks=callbacks,
        verbose=2,
    ).history
    wall = time.perf_counter() - start
    candidates = deployable(model)
    final = {j: history[key][-1] for j, key in candidates}
    deployed = max(final, key=lambda j: final[j])
    deployed_key = dict(candidates)[deployed]
    # Epoch 1 includes tracing/compilation; later epochs measure the step.
    steady = timer.seconds[1:] or timer.seconds
    images_per_sec = steps_per_epoch * FLAGS.batch_size / statistics.median(steady)
    result = {
        "method": method,
        "seed": seed,
        "deployed_peer": deployed,
        "deployed_accuracy": final[deployed],
        "mean_deployable_accuracy": statistics.mean(final.values()),
        "ensemble_accuracy": history.get("val_ensemble_accuracy", [None])[-1],
        "deployed_curve": history[deployed_key],
        "validation_freq": FLAGS.validation_freq,
        "train_images_per_sec": images_per_sec,
        "epoch_train_seconds": timer.seconds,
        "wall_seconds": wall,
        # Epochs done before a resumption (0: one uninterrupted run); the
        # curve, epoch times and wall time then cover the rest only.
        "resumed_at_epoch": FLAGS.epochs - len(history["loss"]),
        "deployed_parameters": model.get_peer(deployed).count_params(),
        "protocol": protocol(len(x_train), len(x_val)),
        "commit": _commit(),
    }
    if FLAGS.export_dir:
        os.makedirs(FLAGS.export_dir, exist_ok=True)
        path = os.path.join(FLAGS.export_dir, f"{method}_seed{seed}.keras")
        model.get_peer(deployed).save(path)
        result["export"] = path
    return result


def _commit():
    """The keras-pcl commit that trained the run (None outside a checkout)."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def protocol(num_train, num_validation):
    import keras

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "backbone": FLAGS.backbone,
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "train_images": num_train,
        "validation_images": num_validation,
        "learning_rate": FLAGS.learning_rate,
        "weight_decay": FLAGS.weight_decay,
        "num_peers": FLAGS.num_peers,
        "ema_decay": FLAGS.ema_decay,
        "rampup_fraction": FLAGS.rampup_fraction,
        "mixed_precision": FLAGS.mixed_precision,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "device": _device(),
    }


def _device():
    try:
        import jax

        kinds = {d.device_kind for d in jax.devices()}
        if any("cpu" not in k.lower() for k in kinds):
            return ", ".join(sorted(kinds))
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return "cpu"


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------


def _runs_path():
    return os.path.join(FLAGS.output_dir, f"{FLAGS.tag}_runs.jsonl")


def load_runs():
    path = _runs_path()
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _mean_std(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(runs):
    if not runs:
        return
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
    vanilla = by_method.get("vanilla")
    vanilla_speed = (
        statistics.median(r["train_images_per_sec"] for r in vanilla)
        if vanilla
        else None
    )
    step_cost = _step_cost()
    vanilla_accuracy = (
        statistics.mean(r["deployed_accuracy"] for r in vanilla) if vanilla else None
    )
    lines = [
        "| method | seeds | deployed val. acc. (%) | vs vanilla (points) "
        "| mean of deployable (%) | ensemble val. acc. (%) | train img/s "
        "| step time / vanilla's |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary = {}
    for m in methods:
        rs = by_method[m]
        speed = statistics.median(r["train_images_per_sec"] for r in rs)
        if step_cost:
            ratio = f"{step_cost[m]:.2f}" if m in step_cost else "-"
        else:
            ratio = f"{vanilla_speed / speed:.2f}" if vanilla_speed else "-"
        gain = "-"
        if vanilla_accuracy is not None and m != "vanilla":
            mean = statistics.mean(r["deployed_accuracy"] for r in rs)
            gain = f"{100 * (mean - vanilla_accuracy):+.2f}"
        lines.append(
            f"| {m} | {len(rs)} | {_mean_std([r['deployed_accuracy'] for r in rs])} "
            f"| {gain} "
            f"| {_mean_std([r['mean_deployable_accuracy'] for r in rs])} "
            f"| {_mean_std([r['ensemble_accuracy'] for r in rs])} "
            f"| {speed:.1f} | {ratio} |"
        )
        accs = [r["deployed_accuracy"] for r in rs]
        summary[m] = {
            "seeds": [r["seed"] for r in rs],
            "deployed_accuracy_mean": statistics.mean(accs),
            "deployed_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "train_images_per_sec": speed,
        }
    p = runs[-1]["protocol"]
    header = (
        f"Protocol: {p['backbone']}, {p['train_images']} training / "
        f"{p['validation_images']} validation images of the CIFAR-10 image "
        f"folder, {p['epochs']} epochs, batch {p['batch_size']}, "
        f"{p['num_peers']} peers, EMA decay {p['ema_decay']}; "
        f"{p['backend']} backend on {p['device']} ({p['machine']}), "
        f"Keras {p['keras']}."
    )
    cost = (
        f"Step time / vanilla's: from {os.path.basename(FLAGS.step_cost_json)} "
        "(benchmarks/throughput.py, every method side by side on an idle "
        "machine)."
        if step_cost
        else "Step time / vanilla's: from the runs' median epochs."
    )
    note = (
        "Mean ± sample std over seeds; vs vanilla: difference of the means. "
        "Deployed: the deployable network "
        "with the best final validation accuracy (PCL: a peer's mean "
        "teacher; OKDDip: the leader). Train img/s: median epoch of each "
        "run, validation excluded; runs that share a machine slow each "
        f"other. {cost}"
    )
    table = "\n".join([header, ""] + lines + ["", note]) + "\n"
    base = os.path.join(FLAGS.output_dir, FLAGS.tag)
    with open(base + ".md", "w") as f:
        f.write(table)
    with open(base + ".json", "w") as f:
        json.dump({"protocol": p, "summary": summary}, f, indent=2)
        f.write("\n")
    print(table)
    _plot(by_method, base + ".png", header)


def _step_cost():
    """`{method: step time / vanilla's}` from `--step_cost_json`, or None."""
    if not FLAGS.step_cost_json:
        return None
    with open(FLAGS.step_cost_json) as f:
        details = json.load(f)["details"]
    if "vanilla" not in details:
        raise app.UsageError(
            f"--step_cost_json must time vanilla too (throughput.py "
            f"--models=all). Received: {FLAGS.step_cost_json} with "
            f"{sorted(details)}"
        )
    vanilla = details["vanilla"]["step_seconds"]
    return {m: d["step_seconds"] / vanilla for m, d in details.items()}


def _plot(by_method, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for m, rs in by_method.items():
        curves = [r["deployed_curve"] for r in rs]
        every = rs[0].get("validation_freq", 1)
        length = min(len(c) for c in curves)
        mean = [100 * statistics.mean(c[i] for c in curves) for i in range(length)]
        epochs = range(every, every * length + 1, every)
        ax.plot(epochs, mean, marker="o", label=f"{m} ({len(rs)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy of the deployed network (%)")
    ax.set_title(title, fontsize=7, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------


def main(argv):
    del argv
    if FLAGS.write_bundle:
        write_bundle(FLAGS.write_bundle)
        return
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.report_only:
        write_report(load_runs())
        return
    methods = list(METHODS) if FLAGS.methods == ["all"] else FLAGS.methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    seeds = [int(s) for s in FLAGS.seeds]
    # On torch, glibc keeps freed activations (the same numbers, faster; see
    # keras_pcl/process.py), as `keras-pcl train` does.
    process.configure_malloc()
    if FLAGS.validation_freq < 1 or FLAGS.epochs % FLAGS.validation_freq:
        raise app.UsageError(
            f"--validation_freq must be >= 1 and divide --epochs={FLAGS.epochs} "
            "(the final epoch selects the deployed network). Received: "
            f"--validation_freq={FLAGS.validation_freq}"
        )
    start = time.perf_counter()
    data = load_arrays()
    print(
        f"data: {len(data[0])} training, {len(data[2])} validation images, "
        f"decoded in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    done = {(r["method"], r["seed"]) for r in load_runs()}
    for seed in seeds:  # All methods for one seed before the next seed.
        for method in methods:
            if (method, seed) in done:
                continue
            if FLAGS.time_budget and time.perf_counter() - start > FLAGS.time_budget:
                print("time budget spent; stopping", flush=True)
                write_report(load_runs())
                return
            print(f"== {method}, seed {seed}", flush=True)
            result = run_one(method, seed, data)
            accuracy = 100 * result["deployed_accuracy"]
            print(
                f"== {method}, seed {seed}: deployed {accuracy:.2f}%"
                f", {result['train_images_per_sec']:.1f} img/s",
                flush=True,
            )
            with open(_runs_path(), "a") as f:
                f.write(json.dumps(result) + "\n")
            write_report(load_runs())


if __name__ == "__main__":
    app.run(main)
