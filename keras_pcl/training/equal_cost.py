"""The plain network against PCL at equal training cost, on the user's data.

A PCL step costs several plain steps (about 4 on a CPU: three peers on
their own views plus the mean teachers). At equal epochs PCL usually wins;
a user pays for compute, and could instead train the plain network longer.
`compare` answers the question on the user's own data and hardware:

1. it times one training step of `config.method` and of the plain network
   (`vanilla`: the backbone and a classifier) side by side on this machine,
   on random images of the data's shape (`keras_pcl.benchmark.time_models`);
2. it trains `config.method` for `config.epochs` epochs and the plain
   network for `round(config.epochs x the step-cost ratio)` epochs, with
   the learning-rate decay epochs scaled alike, each with
   `keras_pcl.training.train` in its own folder under `config.workdir`;
3. it reports the validation accuracy of each deployed network (the best
   peer that `train` exports, selected on the validation split) and which
   one is better at equal cost.

The measured ratio is saved in `<workdir>/compare.json`; a rerun (e.g. after
a crash: both runs resume from their backups) reuses it, so both runs keep
their schedules.
"""

import dataclasses
import json
import os

import keras

from keras_pcl import validation


def measure_step_cost(config, steps=4, repeats=3):
    """Step time of `config.method` over the plain network's, on this machine.

    Builds both models as `train` would (on random images of the dataset's
    shape, batch `config.batch_size`) and times them side by side,
    alternating (`keras_pcl.benchmark.time_models`), so that other load
    slows both alike.

    Args:
        config: a `TrainConfig`.
        steps: training steps per timed `fit` call.
        repeats: timed calls per model (the median is used).

    Returns:
        A dict: `ratio`, `method_step_seconds`, `vanilla_step_seconds`,
        `steps`, `repeats`, `batch_size`.

    Example:

    ```python
    cost = measure_step_cost(TrainConfig(dataset="digits", backbone="resnet8"))
    cost["ratio"]  # e.g. 4.0
    ```
    """
    from keras_pcl import benchmark
    from keras_pcl.training import distribution as distribution_lib
    from keras_pcl.training import job

    validation.check_int("steps", steps, minimum=1)
    validation.check_int("repeats", repeats, minimum=1)
    with distribution_lib.global_state_restored():
        dist = job.set_up_process(config)
        run = job.prepare_data(config, dist)
        models = {}
        for method in ("vanilla", config.method):
            method_config = dataclasses.replace(config, method=method)
            with dist.scope():
                model = job.build_model(
                    method_config, run.image_shape, run.num_classes, run.steps_per_epoch
                )
                job.compile_model(model, method_config, run.steps_per_epoch)
            models[method] = model
        x, y = benchmark.random_images(
            config.batch_size * max(steps, 2), run.image_shape, run.num_classes
        )
        times = benchmark.time_models(
            models, x, y, config.batch_size, steps, repeats, warmup_steps=2
        )
    return {
        "ratio": times[config.method]["step_seconds"]
        / times["vanilla"]["step_seconds"],
        "method_step_seconds": times[config.method]["step_seconds"],
        "vanilla_step_seconds": times["vanilla"]["step_seconds"],
        "steps": steps,
        "repeats": repeats,
        "batch_size": config.batch_size,
    }


def plain_config(config, ratio):
    """The plain network's `TrainConfig` at `ratio` times `config`'s epochs.

    The schedule scales with the epochs: the default one is a fraction of
    the run already (`rampup_fraction`, `lr_decay_fractions`), and absolute
    `lr_decay_epochs` / `rampup_epochs`, where given, are scaled by the same
    factor. The run writes to `<workdir>/vanilla`.

    Example:

    >>> from keras_pcl.training import TrainConfig
    >>> c = plain_config(TrainConfig(epochs=30, lr_decay_epochs=(15, 22.5)), 4.0)
    >>> c.method, c.epochs, c.lr_decay_epochs
    ('vanilla', 120, (60.0, 90.0))
    """
    validation.check_number("ratio", ratio, "a positive number", lambda r: r > 0)
    epochs = max(1, round(config.epochs * ratio))
    scale = epochs / config.epochs
    lr_decay_epochs = config.lr_decay_epochs
    if lr_decay_epochs is not None:
        lr_decay_epochs = tuple(e * scale for e in lr_decay_epochs)
    rampup_epochs = config.rampup_epochs
    if rampup_epochs is not None:
        rampup_epochs = rampup_epochs * scale
    return dataclasses.replace(
        config,
        method="vanilla",
        epochs=epochs,
        lr_decay_epochs=lr_decay_epochs,
        rampup_epochs=rampup_epochs,
        workdir=os.path.join(config.workdir, "vanilla"),
    )


def compare(config, ratio=None, timing_steps=4, timing_repeats=3):
    """Trains `config.method` and the plain network at equal cost.

    Args:
        config: the `TrainConfig` of the method's run (`method` other than
            `vanilla`, a validation split: `validation_split > 0`, or a
            dataset with its own). Its `workdir` holds both runs.
        ratio: the method's step time over the plain network's; None
            measures it on this machine first (`measure_step_cost`), or
            reuses the one saved in `<workdir>/compare.json`.
        timing_steps, timing_repeats: the measurement's size.

    Returns:
        A dict: `ratio` (and `timing`, where measured), `method` and
        `vanilla` (each: `epochs`, `steps`, `accuracy` (validation accuracy
        of the deployed network), `peer`, `seconds` of training, `export`),
        `winner` (the method, `"vanilla"`, or None for a tie) and
        `difference` (method minus plain, accuracy).

    Raises:
        ValueError: `config.method` is `vanilla`, the run has no
            validation split, or a bad `ratio`.

    Example:

    ```python
    from keras_pcl.training import TrainConfig, compare
    result = compare(TrainConfig(dataset="path/to/images", backbone="resnet8",
                                 epochs=30, workdir="runs/compare"))
    print(result["winner"], result["difference"])
    ```
    """
    import time

    from keras_pcl.training import job

    config.validate()
    if config.method == "vanilla":
        raise ValueError(
            "compare trains the plain network against another method: choose "
            "it with `method` (e.g. 'pcl'). Received: method='vanilla'"
        )
    if config.validation_split <= 0 and config.dataset != "imagenet2012":
        raise ValueError(
            "compare selects and scores the deployed networks on a validation "
            "split: set validation_split > 0 (e.g. 0.1). Received: "
            f"validation_split={config.validation_split}"
        )
    os.makedirs(config.workdir, exist_ok=True)
    record_path = os.path.join(config.workdir, "compare.json")
    record = {}
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
    timing = None
    if ratio is None:
        ratio = record.get("ratio")
    if ratio is None:
        timing = measure_step_cost(config, timing_steps, timing_repeats)
        ratio = timing["ratio"]
    validation.check_number("ratio", ratio, "a positive number", lambda r: r > 0)
    if record.get("ratio") not in (None, ratio):
        raise ValueError(
            f"{record_path} holds the runs of step-cost ratio {record['ratio']}; "
            "resuming them with another would change the plain network's "
            "schedule. Pass that ratio, or another workdir. Received: "
            f"ratio={ratio}"
        )
    with open(record_path, "w") as f:
        json.dump({"ratio": ratio, "timing": timing or record.get("timing")}, f)
    method_config = dataclasses.replace(
        config, workdir=os.path.join(config.workdir, config.method)
    )
    runs = {}
    for name, run_config in (
        ("method", method_config),
        ("vanilla", plain_config(config, ratio)),
    ):
        start = time.perf_counter()
        result = job.train(run_config)
        seconds = time.perf_counter() - start
        best = result["model"].best_peer
        runs[name] = {
            "method": run_config.method,
            "epochs": run_config.epochs,
            "steps": result["final_step"],
            "accuracy": float(best.score) if best is not None else None,
            "peer": result["exported_peer"],
            "seconds": seconds,
            "export": result["paths"]["export"],
        }
        keras.backend.clear_session()
    difference = runs["method"]["accuracy"] - runs["vanilla"]["accuracy"]
    return {
        "ratio": ratio,
        "timing": timing,
        "method": runs["method"],
        "vanilla": runs["vanilla"],
        "difference": difference,
        "winner": (
            config.method if difference > 0 else "vanilla" if difference < 0 else None
        ),
    }


def summary(result):
    """The lines `keras-pcl compare` prints for `compare`'s result."""
    m, v = result["method"], result["vanilla"]
    lines = [
        f"Step cost: one {m['method']} step = {result['ratio']:.2f} plain steps"
        + (
            " (measured on this machine)"
            if result["timing"]
            else " (given or saved in compare.json)"
        ),
    ]
    for run in (m, v):
        lines.append(
            f"{run['method']}: {run['epochs']} epochs ({run['steps']} steps, "
            f"{run['seconds']:.0f} s): deployed network (peer {run['peer']}) "
            f"{100 * run['accuracy']:.2f}% on the validation split"
        )
    if result["difference"] > 0:
        verdict = f"{m['method']} is better at equal cost"
    elif result["difference"] < 0:
        verdict = "the plain network is better at equal cost"
    else:
        verdict = "a tie at equal cost"
    lines.append(f"{verdict}: {100 * result['difference']:+.2f} points")
    return lines
