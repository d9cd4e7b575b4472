"""Trunk throughput: `m` separate passes over the views versus one fused pass.

PCL runs its shared trunk once per peer view (`m` passes of batch `B`);
`keras_pcl.fusion.ViewBatchedNetwork` runs the `m` views as one batch of
`m * B`, with batch-norm statistics per view (the same numbers). This times
the trunk's forward and backward pass both ways: a model whose training
step runs the trunk of `CIFARResNet(depth=--depth)`, cut at its
`default_split_at` (stem + stages 1-2 for ResNet-32), on `--num_views` views
of each batch, with the mean square of the trunk's outputs as the loss and
plain SGD, timed by `keras_pcl.benchmark.time_models` (one untimed `fit`
for compilation, then `--repeats` timed `fit` calls of `--steps` steps,
alternating; median). `images/s` counts batch images (each with `m`
views); `fused / separate` is the speed-up.

Usage (one backend per process):

    KERAS_BACKEND=jax python benchmarks/fusion.py
    KERAS_BACKEND=tensorflow python benchmarks/fusion.py --jit_compile=true
    KERAS_BACKEND=torch python benchmarks/fusion.py --threads=2
    KERAS_BACKEND=torch python benchmarks/fusion.py --batch_size=8 --steps=2 \
        --repeats=1   # smoke test
"""

import json
import platform
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Batch size B (images per view).")
flags.DEFINE_integer("num_views", 3, "Views per batch, the PCL peers `m`.")
flags.DEFINE_integer("depth", 32, "CIFAR ResNet depth (6n + 2).")
flags.DEFINE_integer("image_size", 32, "Image height and width.")
flags.DEFINE_integer("steps", 8, "Training steps per timed `fit` call.")
flags.DEFINE_integer("repeats", 3, "Timed `fit` calls per variant (median).")
flags.DEFINE_integer("warmup_steps", 2, "Steps of the untimed first call.")
flags.DEFINE_enum(
    "jit_compile",
    "auto",
    ["auto", "true", "false"],
    "`jit_compile` passed to `compile`.",
)
flags.DEFINE_integer("steps_per_execution", 1, "`steps_per_execution`.")
flags.DEFINE_integer(
    "threads", 0, "torch.set_num_threads / TF intra-op threads (0: default)."
)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")


def build_model(keras, fused):
    """A compiled model whose step is the trunk on every view, and back."""
    from keras import ops

    from keras_pcl.backbones import CIFARResNet
    from keras_pcl.fusion import ViewBatchedNetwork
    from keras_pcl.splitting import split_backbone

    backbone = CIFARResNet(
        depth=FLAGS.depth, input_shape=(FLAGS.image_size, FLAGS.image_size, 3)
    )
    trunk, _ = split_backbone(backbone, backbone.default_split_at)
    num_views = FLAGS.num_views

    class TrunkStep(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.trunk = trunk
            # A plain object: adds no variables (see keras_pcl.fusion).
            self.fused = ViewBatchedNetwork(trunk, num_views) if fused else None

        def call(self, x, training=False):
            views = [x[:, i] for i in range(num_views)]
            if self.fused is not None and training:
                outputs = self.fused(views, training=True)
            else:
                outputs = [self.trunk(v, training=training) for v in views]
            return ops.concatenate(outputs, axis=0)

        def compute_loss(
            self, x=None, y=None, y_pred=None, sample_weight=None, training=True
        ):
            return ops.mean(ops.square(ops.cast(y_pred, "float32")))

    model = TrunkStep(name="fused" if fused else "separate")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        jit_compile={"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile],
        steps_per_execution=FLAGS.steps_per_execution,
    )
    return model


def _configure_threads(backend):
    if not FLAGS.threads:
        return
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(FLAGS.threads)


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_pcl.benchmark import time_models

    backend = keras.backend.backend()
    _configure_threads(backend)
    steps = max(FLAGS.steps, FLAGS.warmup_steps)
    rng = np.random.default_rng(0)
    size = FLAGS.image_size
    # Preprocessed views, (examples, views, height, width, channels).
    x = rng.normal(size=(steps * FLAGS.batch_size, FLAGS.num_views, size, size, 3))
    x = x.astype("float32")
    y = np.zeros((len(x),), "float32")  # Unused by the loss.
    models = {
        name: build_model(keras, name == "fused") for name in ("separate", "fused")
    }
    results = time_models(
        models,
        x,
        y,
        FLAGS.batch_size,
        FLAGS.steps,
        FLAGS.repeats,
        FLAGS.warmup_steps,
    )
    ratio = results["separate"]["step_seconds"] / results["fused"]["step_seconds"]
    print(
        f"backend={backend} depth={FLAGS.depth} m={FLAGS.num_views} "
        f"batch={FLAGS.batch_size} jit_compile={FLAGS.jit_compile}"
    )
    for name, r in results.items():
        print(
            f"  {name:9s} {r['images_per_sec']:9.1f} images/s "
            f"(best {r['best_images_per_sec']:.1f}), "
            f"{1000 * r['step_seconds']:.1f} ms/step, "
            f"compile+warm-up {r['warmup_seconds']:.1f} s"
        )
    print(f"  fused / separate speed-up: {ratio:.2f}x")
    if FLAGS.json:
        record = {
            "backend": backend,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "keras": keras.__version__,
            "flags": {
                name: FLAGS[name].value
                for name in (
                    "batch_size",
                    "num_views",
                    "depth",
                    "image_size",
                    "steps",
                    "repeats",
                    "jit_compile",
                    "steps_per_execution",
                    "threads",
                )
            },
            "results": results,
            "speedup": ratio,
        }
        with open(FLAGS.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    app.run(main)
