"""Input pipeline throughput versus what one PCL training step consumes.

For CIFAR read from an image folder (by default the 50,000 training JPEGs
at ../shared/data/cifar10/train) this measures, on the backend chosen by
`KERAS_BACKEND`:

* load: the one-off decode of every image into the in-memory cache
  (`keras_pcl.data.image_folder`);
* host-side views: training images per second that the pipeline delivers
  with `--num_views` host-augmented views per image (the paper's pad 4 +
  crop + flip), batch `--batch_size`, after the cache is warm: the median
  of `--repeats` full passes over the training split, iterated as NumPy
  (what `fit` does on JAX and PyTorch);
* plain: the same pipeline with `num_views=None` (one unaugmented image,
  for in-model augmentation), to isolate the host-side augmentation cost;
* in-model augmentation: the time `--num_views` draws of
  `keras_pcl.augmentation.default_augmentation(32)` take on a batch, as a
  compiled Keras function (`predict_on_batch`), which is what the model
  adds to its training step when it augments itself;

next to the images per second one PCL training step consumes, read from
`benchmarks/results/throughput_<backend>.json` (written by
`benchmarks/throughput.py`). `pipeline / step` is how many times faster the
input is than the model.

Usage (from the repository root, on an otherwise idle machine):

    KERAS_BACKEND=tensorflow python benchmarks/input_pipeline.py \
        --json benchmarks/results/input_pipeline_tensorflow.json
    KERAS_BACKEND=jax python benchmarks/input_pipeline.py --num_images 2000
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.path.join(ROOT, "..", "shared", "data", "cifar10", "train"),
    "Folder of class sub-folders of images.",
)
flags.DEFINE_integer(
    "num_images",
    0,
    "Use only this many images (the first files of every class, linked "
    "from a temporary folder); 0: all.",
)
flags.DEFINE_integer("num_views", 3, "Host-side views per image (num_peers).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("validation_split", 0.1, "Held-out fraction of each class.")
flags.DEFINE_integer("repeats", 3, "Timed passes over the training split.")
flags.DEFINE_integer("model_repeats", 20, "Timed in-model augmentation calls.")
flags.DEFINE_string(
    "throughput_json",
    None,
    "PCL step throughput JSON; default benchmarks/results/throughput_<backend>.json.",
)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("label", None, "Free-form label stored in the JSON.")


def linked_subset(data_dir, num_images, workdir):
    """A folder of symlinks to the first files of every class (no copies)."""
    from keras_pcl import data

    listing = data.list_image_folder(data_dir, validation_split=0.0)
    per_class = max(1, num_images // len(listing.class_names))
    counts = {}
    for path, label in zip(listing.train_paths, listing.train_labels):
        name = listing.class_names[label]
        if counts.get(name, 0) >= per_class:
            continue
        counts[name] = counts.get(name, 0) + 1
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
        os.symlink(
            os.path.abspath(path),
            os.path.join(workdir, name, os.path.basename(path)),
        )
    return workdir


def time_passes(dataset, repeats):
    """Seconds of each full pass over `dataset`, iterated as NumPy."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in dataset.as_numpy_iterator():
            pass
        seconds.append(time.perf_counter() - start)
    return seconds


def in_model_augmentation_seconds(num_views, batch_size, repeats):
    """Median seconds of `num_views` in-model augmentation draws on a batch."""
    import keras
    import numpy as np

    from keras_pcl.augmentation import default_augmentation

    augmentation = default_augmentation(32)

    class Views(keras.Model):
        def call(self, images):
            images = keras.ops.cast(images, "float32")
            return keras.ops.stack(
                [augmentation(images, training=True) for _ in range(num_views)]
            )

    model = Views()
    images = np.random.default_rng(0).integers(
        0, 256, (batch_size, 32, 32, 3), dtype="uint8"
    )
    model.predict_on_batch(images)  # tracing / compilation
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(model.predict_on_batch(images))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from keras_pcl import data

    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory() as workdir:
        directory = FLAGS.data_dir
        if FLAGS.num_images:
            directory = linked_subset(directory, FLAGS.num_images, workdir)
        common = dict(
            validation_split=FLAGS.validation_split,
            batch_size=FLAGS.batch_size,
            seed=0,
        )
        start = time.perf_counter()
        views = data.image_folder(directory, num_views=FLAGS.num_views, **common)
        load_seconds = time.perf_counter() - start
        plain = data.image_folder(directory, num_views=None, **common)
    num_train = views.num_train

    # The first pass also traces the map functions: untimed.
    time_passes(views.train, 1)
    views_seconds = time_passes(views.train, FLAGS.repeats)
    time_passes(plain.train, 1)
    plain_seconds = time_passes(plain.train, FLAGS.repeats)
    views_ips = num_train / statistics.median(views_seconds)
    plain_ips = num_train / statistics.median(plain_seconds)
    host_aug_ms = 1000 * FLAGS.batch_size * (1 / views_ips - 1 / plain_ips)
    model_aug_ms = 1000 * in_model_augmentation_seconds(
        FLAGS.num_views, FLAGS.batch_size, FLAGS.model_repeats
    )

    path = FLAGS.throughput_json or os.path.join(
        ROOT, "benchmarks", "results", f"throughput_{backend}.json"
    )
    step = None
    if os.path.exists(path):
        with open(path) as f:
            step = json.load(f)
    step_ips = step.get("pcl_images_per_sec") if step else None
    pcl_details = (step or {}).get("details", {}).get("pcl")

    results = {
        "backend": backend,
        "data_dir": os.path.abspath(FLAGS.data_dir),
        "num_train": num_train,
        "num_views": FLAGS.num_views,
        "batch_size": FLAGS.batch_size,
        "load_seconds": load_seconds,
        "pipeline_images_per_sec": views_ips,
        "pipeline_pass_seconds": views_seconds,
        "plain_images_per_sec": plain_ips,
        "plain_pass_seconds": plain_seconds,
        "host_augmentation_ms_per_batch": host_aug_ms,
        "in_model_augmentation_ms_per_batch": model_aug_ms,
        "pcl_step_images_per_sec": step_ips,
        "pcl_step_source": os.path.relpath(path, ROOT) if step_ips else None,
        "pipeline_over_step": views_ips / step_ips if step_ips else None,
        "label": FLAGS.label,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if pcl_details:
        pcl_step_ms = 1000 * pcl_details["step_seconds"]
        results["pcl_step_ms"] = pcl_step_ms
        results["in_model_augmentation_share_of_step"] = model_aug_ms / pcl_step_ms

    print(
        f"backend {backend}, {num_train} training images, "
        f"{FLAGS.num_views} views, batch {FLAGS.batch_size}"
    )
    print(f"load (decode once into the cache): {load_seconds:8.1f} s")
    print(f"pipeline, {FLAGS.num_views} host-side views: {views_ips:10.0f} images/s")
    print(f"pipeline, plain (in-model aug):   {plain_ips:10.0f} images/s")
    if step_ips:
        print(
            f"one PCL training step consumes:   {step_ips:10.1f} images/s "
            f"({results['pcl_step_source']})"
        )
        print(
            f"pipeline / step:                  {results['pipeline_over_step']:10.1f}x"
        )
    else:
        print(f"no PCL step figure: {path} is missing (run benchmarks/throughput.py)")
    print(
        f"host-side augmentation:  {host_aug_ms:8.2f} ms per batch "
        "(pipeline, CPU threads of tf.data)"
    )
    print(
        f"in-model augmentation:   {model_aug_ms:8.2f} ms per batch "
        "(inside the training step)",
        end="",
    )
    if pcl_details:
        print(
            f", {100 * results['in_model_augmentation_share_of_step']:.2f}% "
            "of a PCL step"
        )
    else:
        print()
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
