"""Training throughput of every method versus the same backbone trained alone.

Measures images per second of `model.fit` for the methods named by
`--models` (default: `pcl` and `vanilla`; `all` for every method of
`keras_pcl/methods.py`: PCL, its three ablations, and the baselines of
`keras_pcl.baselines`: vanilla, DML, KDCL, ONE, CL-ILR, OKDDip). Every method
wraps the same backbone with the same in-model augmentation and
`Rescaling(1/255)` preprocessing; `vanilla` is the backbone + `Dense(10)`
trained alone with cross-entropy,
both with `SGD(0.1, momentum=0.9, nesterov=True)` on uint8 inputs, on the
backend chosen by `KERAS_BACKEND`. The backbone is `--backbone NAME`, any of
`keras_pcl.backbones.names()` (resnet20, resnet32, resnet56, resnet110,
wrn20_8, vgg16, densenet40_12, resnet18), built by
`keras_pcl.backbones.get(NAME)` at `--image_size` (default 32, 224 for
resnet18); without `--backbone`, `CIFARResNet(depth=--depth)` as before.
Each model first runs one untimed
`fit` call (tracing/compilation and warm-up), then `--repeats` timed `fit`
calls of `--steps` steps each on an in-memory array, alternating between the
models; the reported figure is the median (the best run is reported as
well, it is less sensitive to other load on the machine). `x vanilla` is
each method's step time / vanilla's step time (`ratio` in the JSON: PCL's).

`--mixed_precision=none,bfloat16` (any of none, float16, bfloat16) builds
every model once per Keras dtype policy (`float32`, `mixed_float16`,
`mixed_bfloat16`) and times them all side by side, alternating; a model of
a mixed policy is named `<model>_<policy>` (`pcl_bfloat16`), and the JSON's
`by_policy` gives each policy's PCL and vanilla images/s, PCL/plain ratio
and PCL speed-up over float32. float16 gets Keras' loss scaling, as in
`keras-pcl train --mixed_precision=float16`.

Usage:

    KERAS_BACKEND=jax python benchmarks/throughput.py \
        --json benchmarks/results/throughput_jax.json
    KERAS_BACKEND=tensorflow python benchmarks/throughput.py --jit_compile=true
    KERAS_BACKEND=torch python benchmarks/throughput.py --threads=2
    KERAS_BACKEND=jax python benchmarks/throughput.py --backbone=resnet110 \
        --json benchmarks/results/throughput_jax_resnet110.json
    KERAS_BACKEND=torch python benchmarks/throughput.py --models=all \
        --depth=8 --batch_size=32
    KERAS_BACKEND=jax python benchmarks/throughput.py \
        --mixed_precision=none,bfloat16,float16    # on a GPU
"""

import json
import os
import platform
import sys

from absl import app
from absl import flags

from keras_pcl.benchmark import random_images
from keras_pcl.benchmark import time_models
from keras_pcl.methods import METHODS
from keras_pcl.training import MIXED_PRECISION
from keras_pcl.training import dtype_policy_name

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 8, "Training steps per timed `fit` call.")
flags.DEFINE_integer("repeats", 3, "Timed `fit` calls per model (median).")
flags.DEFINE_integer(
    "warmup_steps",
    0,
    "Steps of the untimed first `fit` call (compilation). 0: "
    "`steps_per_execution`, at least 2.",
)
flags.DEFINE_integer("num_peers", 3, "PCL peers `m`.")
flags.DEFINE_integer(
    "depth", 32, "CIFAR ResNet depth (6n + 2), used when --backbone is unset."
)
flags.DEFINE_string(
    "backbone",
    None,
    "A built-in backbone, one of keras_pcl.backbones.names(); unset: "
    "CIFARResNet(depth=--depth).",
)
flags.DEFINE_integer(
    "image_size", 0, "Image height and width. 0: 224 for resnet18, else 32."
)
flags.DEFINE_integer("num_classes", 10, "Number of classes.")
flags.DEFINE_enum(
    "jit_compile",
    "auto",
    ["auto", "true", "false"],
    "`jit_compile` passed to `compile` (auto: TF on CPU -> False, "
    "JAX -> True, torch -> False; true on torch means torch.compile).",
)
flags.DEFINE_integer("steps_per_execution", 1, "`steps_per_execution`.")
flags.DEFINE_integer(
    "threads",
    0,
    "Compute threads. TF: intra-op threads; torch: torch.set_num_threads; "
    "JAX: ignored (set XLA_FLAGS yourself). 0: backend default.",
)
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: default).")
flags.DEFINE_enum(
    "data_format",
    "channels_last",
    ["channels_last", "channels_first"],
    "Image data format (on torch both run copy-free through "
    "keras_pcl/fast_paths.py, 96.3 vs 95.7 PCL img/s; TF on CPU needs "
    "channels_last).",
)
flags.DEFINE_list(
    "models",
    ["pcl", "vanilla"],
    "Methods to time, from keras_pcl/methods.py (pcl, its ablations, "
    "vanilla, dml, kdcl, one, cl_ilr, okddip), or 'all'. 'baseline' is an "
    "old name of vanilla.",
)
flags.DEFINE_enum(
    "fusion",
    "both",
    ["both", "fused", "separate"],
    "PCL's views through the trunk as one batch (`fuse_views='auto'`, the "
    "default), one pass per view (`fuse_views=False`, timed as "
    "'pcl_separate'), or both, alternating.",
)
flags.DEFINE_list(
    "mixed_precision",
    ["none"],
    "Dtype policies to time side by side: none (float32), float16 "
    "(mixed_float16), bfloat16 (mixed_bfloat16). Models of a mixed policy are "
    "named <model>_<policy>.",
)
flags.DEFINE_bool(
    "library_settings",
    True,
    "First call keras_pcl.process.configure_tensorflow_threads (unless "
    "--inter_op_threads is set) and keras_pcl.process.configure_malloc, "
    "as `keras-pcl train`, `keras-pcl benchmark` and the examples do; "
    "--nolibrary_settings times the backends' defaults.",
)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("label", None, "Free-form label stored in the JSON.")


def _configure_threads(backend, names):
    if FLAGS.library_settings:
        from keras_pcl import process

        if not FLAGS.inter_op_threads:
            process.configure_tensorflow_threads(
                max(process.parallel_branches(n, FLAGS.num_peers) for n in names)
            )
        process.configure_malloc()
    if backend == "tensorflow":
        import tensorflow as tf

        if FLAGS.threads:
            tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        if FLAGS.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    if backend == "torch":
        import torch

        if FLAGS.threads:
            torch.set_num_threads(FLAGS.threads)
        if FLAGS.inter_op_threads:
            torch.set_num_interop_threads(FLAGS.inter_op_threads)
        return {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        }
    return {"xla_flags": os.environ.get("XLA_FLAGS", "")}


def _backend_version(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    if backend == "jax":
        import jax

        return jax.__version__
    if backend == "torch":
        import torch

        return torch.__version__
    return None


def _image_size():
    if FLAGS.image_size:
        return FLAGS.image_size
    return 224 if FLAGS.backbone == "resnet18" else 32


def _image_shape():
    size = _image_size()
    if FLAGS.data_format == "channels_first":
        return (3, size, size)
    return (size, size, 3)


def build_backbone(keras_pcl):
    """`--backbone` (by name) or `CIFARResNet(--depth)`, at `_image_shape()`."""
    if FLAGS.backbone:
        return keras_pcl.backbones.get(
            FLAGS.backbone,
            input_shape=_image_shape(),
            data_format=FLAGS.data_format,
        )
    return keras_pcl.backbones.CIFARResNet(
        depth=FLAGS.depth,
        input_shape=_image_shape(),
        data_format=FLAGS.data_format,
    )


def _jit_arg():
    return {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]


def _optimizer(keras):
    return keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)


def build_model(name, keras, keras_pcl):
    """Method `name` of `keras_pcl/methods.py` on a fresh backbone, compiled."""
    from keras_pcl.methods import build_method

    separate = name == "pcl_separate" or (
        FLAGS.fusion == "separate" and name.startswith("pcl")
    )
    model = build_method(
        "pcl" if name == "pcl_separate" else name,
        build_backbone(keras_pcl),
        num_classes=FLAGS.num_classes,
        num_peers=FLAGS.num_peers,
        fuse_views=False if separate else "auto",
    )
    model.compile(
        optimizer=_optimizer(keras),
        jit_compile=_jit_arg(),
        steps_per_execution=FLAGS.steps_per_execution,
    )
    return model


def _model_name(name, precision):
    return name if precision == "none" else f"{name}_{precision}"


def _policy_summary(results, precision):
    """PCL and vanilla figures of one `--mixed_precision` entry."""

    def images_per_sec(name):
        r = results.get(_model_name(name, precision))
        return r["images_per_sec"] if r else None

    summary = {
        "dtype_policy": dtype_policy_name(precision),
        "pcl_images_per_sec": images_per_sec("pcl"),
        "pcl_separate_images_per_sec": images_per_sec("pcl_separate"),
        "vanilla_images_per_sec": images_per_sec("vanilla"),
        "ratio": None,
        "pcl_speedup_over_float32": None,
    }
    pcl, vanilla = summary["pcl_images_per_sec"], summary["vanilla_images_per_sec"]
    if pcl and vanilla:
        summary["ratio"] = vanilla / pcl  # PCL step time / vanilla step time.
    if pcl and "pcl" in results:
        summary["pcl_speedup_over_float32"] = pcl / results["pcl"]["images_per_sec"]
    return summary


def main(argv):
    del argv

    import keras

    import keras_pcl

    backend = keras.backend.backend()
    keras.config.set_image_data_format(FLAGS.data_format)
    if FLAGS.backbone and FLAGS.backbone not in keras_pcl.backbones.names():
        raise app.UsageError(
            f"--backbone must be one of {keras_pcl.backbones.names()}. "
            f"Received: --backbone={FLAGS.backbone}"
        )
    names = list(METHODS) if FLAGS.models == ["all"] else FLAGS.models
    names = ["vanilla" if n == "baseline" else n for n in names]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise app.UsageError(
            f"--models: unknown {unknown}; known: {list(METHODS)} or 'all'"
        )
    precisions = list(dict.fromkeys(FLAGS.mixed_precision))
    bad = [p for p in precisions if p not in MIXED_PRECISION]
    if bad or not precisions:
        raise app.UsageError(
            f"--mixed_precision takes a list of {list(MIXED_PRECISION)}. "
            f"Received: --mixed_precision={','.join(FLAGS.mixed_precision)}"
        )
    threads = _configure_threads(backend, names)
    keras.utils.set_random_seed(FLAGS.seed)

    spe = FLAGS.steps_per_execution
    steps = max(FLAGS.steps, spe)
    steps = -(-steps // spe) * spe  # a multiple of steps_per_execution
    warmup_steps = FLAGS.warmup_steps or max(2, spe)
    warmup_steps = -(-warmup_steps // spe) * spe
    n = max(steps, warmup_steps) * FLAGS.batch_size
    x, y = random_images(n, _image_shape(), FLAGS.num_classes, FLAGS.seed)

    if FLAGS.fusion == "both" and "pcl" in names:
        names.insert(names.index("pcl") + 1, "pcl_separate")
    models = {}
    default_policy = keras.config.dtype_policy()
    try:
        for precision in precisions:
            keras.config.set_dtype_policy(dtype_policy_name(precision))
            for name in names:
                models[_model_name(name, precision)] = build_model(
                    name, keras, keras_pcl
                )
    finally:
        keras.config.set_dtype_policy(default_policy)
    results = time_models(
        models, x, y, FLAGS.batch_size, steps, FLAGS.repeats, warmup_steps
    )
    for name, model in models.items():
        results[name]["dtype_policy"] = model.dtype_policy.name
    for name, r in results.items():
        print(
            f"[{backend}] {name}: {r['images_per_sec']:.1f} img/s median, "
            f"{r['best_images_per_sec']:.1f} best "
            f"(runs {['%.2f' % t for t in r['run_seconds']]} s, "
            f"warm-up {r['warmup_seconds']:.1f} s)",
            flush=True,
        )

    out = {
        "backend": backend,
        "batch_size": FLAGS.batch_size,
        "pcl_images_per_sec": results.get("pcl", {}).get("images_per_sec"),
        "baseline_images_per_sec": results.get("vanilla", {}).get("images_per_sec"),
        "ratio": (
            results["pcl"]["step_seconds"] / results["vanilla"]["step_seconds"]
            if "pcl" in results and "vanilla" in results
            else None
        ),
        "pcl_best_images_per_sec": results.get("pcl", {}).get("best_images_per_sec"),
        "baseline_best_images_per_sec": results.get("vanilla", {}).get(
            "best_images_per_sec"
        ),
        "best_ratio": (
            results["pcl"]["best_step_seconds"]
            / results["vanilla"]["best_step_seconds"]
            if "pcl" in results and "vanilla" in results
            else None
        ),
        "pcl_separate_images_per_sec": results.get("pcl_separate", {}).get(
            "images_per_sec"
        ),
        "fused_speedup": (
            results["pcl_separate"]["step_seconds"] / results["pcl"]["step_seconds"]
            if "pcl" in results and "pcl_separate" in results
            else None
        ),
        "fusion": FLAGS.fusion,
        "mixed_precision": precisions,
        "by_policy": {p: _policy_summary(results, p) for p in precisions},
        "label": FLAGS.label,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "repeats": FLAGS.repeats,
        "num_peers": FLAGS.num_peers,
        "backbone": FLAGS.backbone or f"cifar_resnet{FLAGS.depth}",
        "depth": FLAGS.depth if not FLAGS.backbone else None,
        "image_size": _image_size(),
        "num_classes": FLAGS.num_classes,
        "jit_compile": FLAGS.jit_compile,
        "resolved_jit_compile": {
            k: v["resolved_jit_compile"] for k, v in results.items()
        },
        "steps_per_execution": spe,
        "data_format": FLAGS.data_format,
        "threads": threads,
        "library_settings": FLAGS.library_settings,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "keras_version": keras.__version__,
        "backend_version": _backend_version(backend),
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "details": results,
    }

    rows = [("model", "img/s", "step s", "best img/s", "x vanilla")]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r['images_per_sec']:.1f}",
                f"{r['step_seconds']:.3f}",
                f"{r['best_images_per_sec']:.1f}",
                f"{r['ratio_to_vanilla']:.2f}" if "ratio_to_vanilla" in r else "-",
            )
        )
    print(
        f"\nbackend={backend} jit_compile={FLAGS.jit_compile} "
        f"(resolved {out['resolved_jit_compile']}) "
        f"steps_per_execution={spe} data_format={FLAGS.data_format} threads={threads} "
        f"batch={FLAGS.batch_size} cpus={os.cpu_count()}"
    )
    for row in rows:
        print(f"{row[0]:<24}{row[1]:>10}{row[2]:>10}{row[3]:>12}{row[4]:>11}")
    if out["ratio"] is not None:
        print(
            f"ratio (PCL step time / vanilla step time): {out['ratio']:.2f} "
            f"median, {out['best_ratio']:.2f} best"
        )
    for precision, summary in out["by_policy"].items():
        if precision == "none":
            continue
        figures = [f"{summary['dtype_policy']}:"]
        if summary["ratio"] is not None:
            figures.append(f"PCL/vanilla {summary['ratio']:.2f}")
        if summary["pcl_speedup_over_float32"] is not None:
            figures.append(
                f"PCL {summary['pcl_speedup_over_float32']:.2f}x float32's images/s"
            )
        print(" ".join(figures))

    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    sys.exit(app.run(main))
