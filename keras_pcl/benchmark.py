"""Training throughput of any methods, timed the same way for all.

Used by `keras-pcl benchmark` and `benchmarks/throughput.py`. Each model
first runs one untimed `fit` (tracing/compilation and warm-up), then
`repeats` timed `fit` calls of `steps` steps each, alternating between the
models so that slow drifts of the machine do not favour one of them; the
figure is the median (the best run is kept too). A call is timed over its
training loop (`time_fit`), without `fit`'s set-up and tear-down.
"""

import statistics
import time

import keras
import numpy as np


def random_images(num_images, image_shape, num_classes, seed=0):
    """uint8 images and int32 labels to time training on."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(num_images,) + tuple(image_shape), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=(num_images,), dtype=np.int32)
    return x, y


class _LoopTimer(keras.callbacks.Callback):
    """Seconds from `on_train_begin` to `on_train_end`: the training loop."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def time_fit(model, x, y, batch_size, steps, return_wall=False):
    """Seconds of the training loop of one `fit` call of `steps` steps.

    Timed from `on_train_begin` to `on_train_end` (no shuffling, silent):
    every step and its data, not `fit`'s set-up and tear-down. The
    tear-down includes destroying the TensorFlow backend's `tf.data`
    iterator, which waits for a background thread of tf.data (measured on
    TensorFlow 2.21 at up to 4.6 s, in about half of the `fit` calls,
    with py-spy: `IteratorResource::~IteratorResource` in
    `Notification::WaitForNotification`); a timed `fit` of a few steps
    would then report that wait as step time.

    Args:
        model: a compiled Keras model.
        x, y: training data with at least `steps * batch_size` examples.
        batch_size: int.
        steps: int, the number of training steps.
        return_wall: also return the wall-clock seconds of the whole call.

    Returns:
        The loop's seconds, or `(loop seconds, wall seconds)`.
    """
    timer = _LoopTimer()
    start = time.perf_counter()
    model.fit(
        x[: steps * batch_size],
        y[: steps * batch_size],
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    wall = time.perf_counter() - start
    return (timer.seconds, wall) if return_wall else timer.seconds


def time_models(models, x, y, batch_size, steps, repeats, warmup_steps, progress=None):
    """Times compiled models on the same data.

    Args:
        models: dict of name -> compiled model.
        x, y: training data with at least `max(steps, warmup_steps) *
            batch_size` examples.
        batch_size: int.
        steps: training steps per timed `fit` call.
        repeats: timed calls per model.
        warmup_steps: steps of the untimed first call.
        progress: optional `keras.utils.Progbar` with
            `len(models) * (repeats + 1)` units.

    Returns:
        dict of name -> figures: `warmup_seconds`, `run_seconds` (the
        training loops), `fit_wall_seconds` (the whole `fit` calls),
        `step_seconds` (median), `images_per_sec`, `best_step_seconds`,
        `best_images_per_sec`, and `ratio_to_vanilla` when `vanilla` is
        one of the models.
    """
    warmup = {}
    for name, model in models.items():
        warmup[name] = time_fit(model, x, y, batch_size, warmup_steps)
        if progress is not None:
            progress.add(1)
    times = {name: [] for name in models}
    walls = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            loop, wall = time_fit(model, x, y, batch_size, steps, return_wall=True)
            times[name].append(loop)
            walls[name].append(wall)
            if progress is not None:
                progress.add(1)
    results = {}
    for name, model in models.items():
        step = statistics.median(times[name]) / steps
        best = min(times[name]) / steps
        results[name] = {
            "warmup_seconds": warmup[name],
            "run_seconds": times[name],
            "fit_wall_seconds": walls[name],
            "step_seconds": step,
            "images_per_sec": batch_size / step,
            "best_step_seconds": best,
            "best_images_per_sec": batch_size / best,
            "resolved_jit_compile": bool(getattr(model, "jit_compile", False)),
        }
    if "vanilla" in results:
        for r in results.values():
            r["ratio_to_vanilla"] = (
                r["step_seconds"] / results["vanilla"]["step_seconds"]
            )
    return results
