"""Deployed accuracy against the number of training images (issue #17).

Where does PCL pay for its four-times cost? This runs `accuracy.py`'s CPU
protocol (ResNet-8, batch 128, the fixed 5,000-image validation split, the
same optimiser, augmentation and selection rule) on class-balanced training
subsets of several sizes, for vanilla, PCL and a baseline, and plots the
deployed validation accuracy against the size.

Schedule: every size trains for about the protocol's number of SGD steps
(5,000 images x 30 epochs = 1,170 steps of 128), i.e. the same compute per
point: `epochs = round(30 * 39 / steps_per_epoch)` (1,280 images: 117
epochs; 45,000: 3). Small datasets therefore get many epochs, as a
practitioner would give them; large ones a short schedule, which the table
says. The default sizes are multiples of 1,280 (128 per class) where
possible, because `accuracy.py` trains on whole batches: 1,280, 2,560 and
10,240 images drop none, 45,000 drops 72 (0.2%), 5,000 drops 8.

Each size is one `accuracy.py` command with its own runs file
(`results/data_efficiency_<N>_runs.jsonl`), so the curve resumes where it
stopped; the 5,000-image point is the protocol itself
(`results/accuracy_cpu_runs.jsonl`). The report is
`results/data_efficiency.md`, `.json` and `.png`; every point says its seeds
and schedule.

Usage:

    KERAS_BACKEND=torch python benchmarks/data_efficiency.py \\
        --methods=vanilla,one,pcl --seeds=0
    python benchmarks/data_efficiency.py --report_only
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_HERE = os.path.dirname(os.path.abspath(__file__))
PROTOCOL_IMAGES = 5000
PROTOCOL_EPOCHS = 30
BATCH = 128

FLAGS = flags.FLAGS


def _define_flags():
    # Defined when run as a script only: the tests import this module next
    # to others that define absl flags.
    flags.DEFINE_list(
        "sizes", ["1280", "2560", "5000", "10240", "45000"], "Training images."
    )
    flags.DEFINE_list("methods", ["vanilla", "one", "pcl"], "Methods (accuracy.py).")
    flags.DEFINE_list("seeds", ["0"], "Seeds per point.")
    flags.DEFINE_string("output_dir", os.path.join(_HERE, "results"), "")
    flags.DEFINE_bool("report_only", False, "Only rebuild the report from the runs.")


def steps_per_epoch(images):
    return images // BATCH


def epochs_for(images):
    """Epochs that give about the protocol's 1,170 steps at this size."""
    target = PROTOCOL_EPOCHS * steps_per_epoch(PROTOCOL_IMAGES)
    return max(1, round(target / steps_per_epoch(images)))


def validation_freq_for(epochs, max_validations=15):
    """The smallest divisor of `epochs` that validates at most 15 times.

    Validation does not change training; at 117 epochs of 10 steps it
    would cost more than the training itself. A divisor, so that the final
    epoch (which selects the deployed network) is validated.
    """
    return next(
        d
        for d in range(1, epochs + 1)
        if epochs % d == 0 and epochs // d <= max_validations
    )


def validation_freq(images):
    """Every epoch for the protocol's own runs (its per-epoch plot)."""
    if images == PROTOCOL_IMAGES:
        return 1
    return validation_freq_for(epochs_for(images))


def tag_for(images):
    return "accuracy_cpu" if images == PROTOCOL_IMAGES else f"data_efficiency_{images}"


def load_runs(output_dir, images):
    path = os.path.join(output_dir, f"{tag_for(images)}_runs.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    # Only runs of this point's schedule (the protocol file has no others).
    return [r for r in runs if r["protocol"]["epochs"] == epochs_for(images)]


def curve(output_dir, sizes, methods):
    """`{method: [(images, epochs, seeds, mean, std)]}` from the runs files."""
    points = {m: [] for m in methods}
    for images in sizes:
        runs = load_runs(output_dir, images)
        for m in methods:
            accs = [r["deployed_accuracy"] for r in runs if r["method"] == m]
            seeds = sorted(r["seed"] for r in runs if r["method"] == m)
            if not accs:
                continue
            std = statistics.stdev(accs) if len(accs) > 1 else None
            points[m].append(
                (images, epochs_for(images), seeds, statistics.mean(accs), std)
            )
    return points


def write_report(points):
    lines = [
        "| training images | epochs (steps) | "
        + " | ".join(f"{m} (%)" for m in points)
        + " | PCL - vanilla (points) |",
        "| --- | --- | " + " | ".join("---" for _ in points) + " | --- |",
    ]
    sizes = sorted({p[0] for ps in points.values() for p in ps})
    for images in sizes:
        epochs = epochs_for(images)
        cells = []
        by_method = {}
        for m, ps in points.items():
            match = [p for p in ps if p[0] == images]
            if not match:
                cells.append("-")
                continue
            _, _, seeds, mean, std = match[0]
            by_method[m] = mean
            spread = f" ± {100 * std:.2f}" if std is not None else ""
            cells.append(f"{100 * mean:.2f}{spread} (seeds {seeds})")
        gain = (
            f"{100 * (by_method['pcl'] - by_method['vanilla']):+.2f}"
            if {"pcl", "vanilla"} <= set(by_method)
            else "-"
        )
        row = f"| {images} | {epochs} ({epochs * steps_per_epoch(images)}) | "
        lines.append(row + " | ".join(cells) + f" | {gain} |")
    header = (
        "Deployed validation accuracy (the fixed 5,000-image CIFAR-10 "
        "validation split) against the class-balanced training subset; "
        "ResNet-8, batch 128, about 1,170 SGD steps per point (the CPU "
        "protocol of benchmarks/accuracy.py), mean ± std over the seeds named."
    )
    table = "\n".join([header, ""] + lines) + "\n"
    base = os.path.join(FLAGS.output_dir, "data_efficiency")
    with open(base + ".md", "w") as f:
        f.write(table)
    with open(base + ".json", "w") as f:
        json.dump({m: [list(p) for p in ps] for m, ps in points.items()}, f, indent=2)
        f.write("\n")
    print(table)
    _plot(points, base + ".png")


def _plot(points, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, ps in points.items():
        if not ps:
            continue
        xs = [p[0] for p in ps]
        ys = [100 * p[3] for p in ps]
        errs = [100 * (p[4] or 0) for p in ps]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=m)
        for x, y, p in zip(xs, ys, ps):
            ax.annotate(
                f"{len(p[2])}s/{p[1]}ep",
                (x, y),
                fontsize=6,
                xytext=(3, -9),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("training images (class-balanced CIFAR-10 subset)")
    ax.set_ylabel("deployed validation accuracy (%)")
    ax.set_title("ResNet-8, ~1,170 SGD steps per point (seeds/epochs marked)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv):
    del argv
    sizes = [int(s) for s in FLAGS.sizes]
    if not FLAGS.report_only:
        for images in sizes:
            command = [
                sys.executable,
                os.path.join(_HERE, "accuracy.py"),
                f"--train_images={images}",
                f"--epochs={epochs_for(images)}",
                f"--validation_freq={validation_freq(images)}",
                f"--methods={','.join(FLAGS.methods)}",
                f"--seeds={','.join(FLAGS.seeds)}",
                f"--tag={tag_for(images)}",
                f"--output_dir={FLAGS.output_dir}",
            ]
            print("$ " + " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True)
    write_report(curve(FLAGS.output_dir, sizes, FLAGS.methods))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
