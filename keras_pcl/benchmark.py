"""Training throughput of any methods, timed the same way for all.

Used by `keras-pcl benchmark` and `benchmarks/throughput.py`. Each model
first runs one untimed `fit` (tracing/compilation and warm-up), then
`repeats` timed `fit` calls of `steps` steps each, alternating between the
models so that slow drifts of the machine do not favour one of them; the
figure is the median (the best run is kept too).
"""

import statistics
import time

import numpy as np


def random_images(num_images, image_shape, num_classes, seed=0):
    """uint8 images and int32 labels to time training on."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(num_images,) + tuple(image_shape), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=(num_images,), dtype=np.int32)
    return x, y


def time_fit(model, x, y, batch_size, steps):
    """Seconds of one `fit` call of `steps` steps (no shuffling, silent)."""
    start = time.perf_counter()
    model.fit(
        x[: steps * batch_size],
        y[: steps * batch_size],
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return time.perf_counter() - start


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
        dict of name -> figures: `warmup_seconds`, `run_seconds`,
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
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(time_fit(model, x, y, batch_size, steps))
            if progress is not None:
                progress.add(1)
    results = {}
    for name, model in models.items():
        step = statistics.median(times[name]) / steps
        best = min(times[name]) / steps
        results[name] = {
            "warmup_seconds": warmup[name],
            "run_seconds": times[name],
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
