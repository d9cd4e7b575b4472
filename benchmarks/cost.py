"""Accuracy against training cost: does PCL pay for its compute? (issue #30)

`accuracy.py` compares methods at equal epochs, the paper's terms. A user
pays per unit of compute and can instead train the plain network longer.
This runs `accuracy.py`'s CPU protocol (ResNet-8, 5,000 training images,
the fixed 5,000-image validation split, batch 128, SGD with the learning
rate divided by 10 at 50% and 75% of training, the ramp-up over 80/300 of
training: the schedule scales with each run's epochs, as in `accuracy.py`)
for several methods at several epoch budgets, and reports the deployed
validation accuracy against the training cost, counted two ways:

* vanilla-epoch equivalents: epochs x the method's step time over vanilla's,
  from `--step_cost_json`: by default `benchmarks/pcl_step_parts.py`'s
  single-threaded CPU time per step, every method timed side by side,
  alternating, on the same machine (a `benchmarks/throughput.py` JSON
  works too: wall-clock, which other processes inflate);
* wall-clock: the runs' own training seconds (validation excluded), which
  are only comparable between runs made on an otherwise idle machine.

Selection is `accuracy.py`'s: the deployable network with the best final
validation accuracy; nothing is tuned on anything else.

Each epoch budget is one `accuracy.py` tag (`<tag>_<E>ep_runs.jsonl` under
`--output_dir`), so the benchmark resumes where it stopped: finished runs
are skipped, and with `--backup_dir` a run killed mid-way resumes at its
last finished epoch. Runs go seed by seed, cheapest first, so that the
smallest complete comparison lands first. The report (`<tag>.md`,
`.json`, `.png`) is rebuilt from the runs files after every run.

Usage (one thread, niced, in the background; TensorFlow was the faster
backend single-threaded on the 2-core VM, see `docs/when_pcl_pays.md`):

    OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
    KERAS_BACKEND=tensorflow nohup nice -n 19 python benchmarks/cost.py \\
        --seeds=0,1,2 --output_dir=/work/bench-i30/results \\
        --backup_dir=/work/bench-i30/backup &
    python benchmarks/cost.py --report_only --output_dir=benchmarks/results
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_HERE = os.path.dirname(os.path.abspath(__file__))

# method: epoch budgets (issue #30's grid).
DEFAULT_BUDGETS = (
    "vanilla:30/60/135/270/540,one:30/90/180,pcl:30/60/120,pcl_lean:30/60/120"
)

FLAGS = flags.FLAGS


def _define_flags():
    # Defined when run as a script only: the tests import this module next
    # to others that define absl flags.
    flags.DEFINE_string(
        "budgets",
        DEFAULT_BUDGETS,
        "Comma-separated method:E1/E2/... epoch budgets (methods of "
        "keras_pcl/methods.py).",
    )
    flags.DEFINE_list("seeds", ["0"], "Seeds; every budget of a seed runs first.")
    flags.DEFINE_string(
        "first",
        "vanilla:30/60/135,pcl:30",
        "Budgets (as --budgets) that run before the others of each seed: "
        "the smallest complete comparison. Empty: cheapest first throughout.",
    )
    flags.DEFINE_string("output_dir", os.path.join(_HERE, "results"), "")
    flags.DEFINE_string("tag", "cost", "Prefix of the files written.")
    flags.DEFINE_string(
        "backup_dir", None, "Passed to accuracy.py (mid-run resumption)."
    )
    flags.DEFINE_string(
        "step_cost_json",
        os.path.join(_HERE, "results", "pcl_step_parts_tensorflow.json"),
        "benchmarks/pcl_step_parts.py JSON (CPU time per step) or "
        "benchmarks/throughput.py JSON timing vanilla and the methods side by "
        "side (same backbone and batch): step time / vanilla's.",
    )
    flags.DEFINE_bool("report_only", False, "Only rebuild the report.")
    flags.DEFINE_bool(
        "dry_run", False, "Print the runs (in order) and their commands only."
    )


def parse_budgets(text):
    """`{method: [epochs, ...]}` from `"vanilla:30/60,pcl:30"`.

    Example:

    >>> parse_budgets("vanilla:30/60,pcl:30")
    {'vanilla': [30, 60], 'pcl': [30]}
    """
    from keras_pcl.methods import METHODS

    budgets = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        method, _, epochs = item.partition(":")
        if method not in METHODS:
            raise ValueError(
                f"--budgets: unknown method {method!r}; known: {list(METHODS)}. "
                f"Received: {item!r}"
            )
        try:
            values = [int(e) for e in epochs.split("/")]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise ValueError(
                f"--budgets: each method needs positive integer epochs, as "
                f"'vanilla:30/60'. Received: {item!r}"
            )
        budgets[method] = values
    if not budgets:
        raise ValueError(f"--budgets names no run. Received: {text!r}")
    return budgets


def step_costs(path):
    """`{method: step time / vanilla's}` from a throughput.py JSON.

    Or from a `pcl_step_parts.py` JSON: the steps' CPU-time ratios.
    """
    with open(path) as f:
        data = json.load(f)
    if "parts" in data:
        steps = {
            name[len("step_") :]: part["cpu_vanilla_steps"]
            for name, part in data["parts"].items()
            if name.startswith("step_")
        }
        if "vanilla" not in steps:
            raise ValueError(f"{path} has no vanilla step. Received: {sorted(steps)}")
        return steps
    details = data["details"]
    if "vanilla" not in details:
        raise ValueError(
            f"The step-cost JSON must time vanilla too (throughput.py "
            f"--models=vanilla,...). Received: {path} with {sorted(details)}"
        )
    vanilla = details["vanilla"]["step_seconds"]
    return {m: d["step_seconds"] / vanilla for m, d in details.items()}


def run_order(budgets, seeds, costs, first=None):
    """`[(seed, method, epochs)]`: seed by seed, `first`'s runs, then cheapest.

    A method missing from `costs` counts as 1 vanilla step per step (the
    order only; its report row then has no cost).

    Example:

    >>> run_order({"vanilla": [30, 135], "pcl": [30]}, [0], {"pcl": 4.0})
    [(0, 'vanilla', 30), (0, 'vanilla', 135), (0, 'pcl', 30)]
    >>> run_order({"vanilla": [30, 135], "one": [90]}, [0], {"one": 1.5},
    ...           first={"vanilla": [135]})
    [(0, 'vanilla', 135), (0, 'vanilla', 30), (0, 'one', 90)]
    """
    first = first or {}
    runs = []
    for seed in seeds:
        grid = [(m, e) for m, es in budgets.items() for e in es]
        grid.sort(
            key=lambda me: (
                me[1] not in first.get(me[0], ()),
                me[1] * costs.get(me[0], 1.0),
                me[0],
            )
        )
        runs += [(seed, m, e) for m, e in grid]
    return runs


def validation_freq(epochs, max_validations=30):
    """The smallest divisor of `epochs` that validates at most 30 times.

    Validation changes no training; a divisor, so that the final epoch
    (which selects the deployed network) is validated.

    Example:

    >>> validation_freq(30), validation_freq(135), validation_freq(540)
    (1, 5, 18)
    """
    return next(
        d
        for d in range(1, epochs + 1)
        if epochs % d == 0 and epochs // d <= max_validations
    )


def budget_tag(tag, epochs):
    return f"{tag}_{epochs}ep"


def load_runs(output_dir, tag, epochs):
    path = os.path.join(output_dir, f"{budget_tag(tag, epochs)}_runs.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return [r for r in runs if r["protocol"]["epochs"] == epochs]


def points(output_dir, tag, budgets, costs):
    """Rows `{method, epochs, seeds, accuracies, cost, train_seconds}`."""
    rows = []
    for method, epochs_list in budgets.items():
        for epochs in epochs_list:
            runs = [
                r for r in load_runs(output_dir, tag, epochs) if r["method"] == method
            ]
            if not runs:
                continue
            # Wall-clock only of runs that trained in one go.
            whole = [r for r in runs if not r.get("resumed_at_epoch")]
            seconds = [
                sum(r["epoch_train_seconds"]) * _unvalidated_factor(r) for r in whole
            ]
            rows.append(
                {
                    "method": method,
                    "epochs": epochs,
                    "seeds": sorted(r["seed"] for r in runs),
                    "accuracies": [r["deployed_accuracy"] for r in runs],
                    "ensemble": [r.get("ensemble_accuracy") for r in runs],
                    "cost": epochs * costs[method] if method in costs else None,
                    "train_seconds": statistics.median(seconds) if seconds else None,
                    "backend": runs[0]["protocol"]["backend"],
                    "commits": sorted({str(r.get("commit")) for r in runs}),
                }
            )
    return rows


def _unvalidated_factor(run):
    """Epochs per timed epoch: the timer times validated epochs only."""
    return run["protocol"]["epochs"] / max(1, len(run["epoch_train_seconds"]))


def best_plain_at(rows, cost):
    """The best mean vanilla accuracy among budgets costing at most `cost`."""
    plain = [
        r
        for r in rows
        if r["method"] == "vanilla" and r["cost"] is not None and r["cost"] <= cost
    ]
    if not plain:
        return None
    return max(plain, key=lambda r: statistics.mean(r["accuracies"]))


def _fmt(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(rows, costs, output_dir, tag, source):
    if not rows:
        print("no finished runs yet")
        return
    lines = [
        "| method | epochs | seeds | deployed val. acc. (%) | ensemble (%) "
        "| cost (vanilla epochs) | train time (s) | best vanilla at <= this cost "
        "| vs it (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = sorted(rows, key=lambda r: (r["method"], r["cost"] or 0))
    for r in sorted(order, key=lambda r: r["method"] != "vanilla"):
        best = best_plain_at(rows, r["cost"]) if r["cost"] is not None else None
        versus = "-"
        if best is not None and r["method"] != "vanilla":
            diff = statistics.mean(r["accuracies"])
            diff -= statistics.mean(best["accuracies"])
            versus = f"{100 * diff:+.2f}"
        cost = "-" if r["cost"] is None else f"{r['cost']:.0f}"
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        plain = "-"
        if best is not None and r["method"] != "vanilla":
            plain = f"{best['epochs']} ep: {_fmt(best['accuracies'])}"
        lines.append(
            f"| {r['method']} | {r['epochs']} | {r['seeds']} "
            f"| {_fmt(r['accuracies'])} | {_fmt(r['ensemble'])} | {cost} "
            f"| {seconds} | {plain} | {versus} |"
        )
    ratio = ", ".join(f"{m} {c:.2f}" for m, c in sorted(costs.items()))
    note = (
        "Deployed validation accuracy (the fixed 5,000-image split; mean ± "
        "std over the seeds named) against training cost. Cost: epochs x "
        f"step time / vanilla's ({ratio}; from {source}). Train time: median "
        "over the seeds of the runs' training seconds (validation excluded), "
        "comparable only between runs made on an otherwise idle machine. "
        "Best vanilla at <= this cost: the vanilla budget with the best mean "
        "accuracy among those that cost no more than the row."
    )
    table = "\n".join(lines + ["", note]) + "\n"
    base = os.path.join(output_dir, tag)
    with open(base + ".md", "w") as f:
        f.write(table)
    with open(base + ".json", "w") as f:
        json.dump({"step_cost": costs, "source": source, "rows": rows}, f, indent=2)
        f.write("\n")
    print(table)
    _plot(rows, base + ".png")


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "vanilla")
    for ax, key, label in (
        (axes[0], "cost", "training cost (vanilla-epoch equivalents)"),
        (axes[1], "train_seconds", "training wall-clock (s; shared machine)"),
    ):
        for m in methods:
            rs = sorted(
                (r for r in rows if r["method"] == m and r[key] is not None),
                key=lambda r: r[key],
            )
            if not rs:
                continue
            xs = [r[key] for r in rs]
            ys = [100 * statistics.mean(r["accuracies"]) for r in rs]
            errs = [
                100 * statistics.stdev(r["accuracies"])
                if len(r["accuracies"]) > 1
                else 0
                for r in rs
            ]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=m)
            for x, y, r in zip(xs, ys, rs):
                ax.annotate(
                    f"{r['epochs']}ep/{len(r['seeds'])}s",
                    (x, y),
                    fontsize=6,
                    xytext=(3, -9),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ticks = sorted({round(r[key]) for r in rows if r[key] is not None})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("deployed validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "ResNet-8, 5,000 CIFAR-10 training images, 5,000-image validation split",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv):
    del argv
    budgets = parse_budgets(FLAGS.budgets)
    seeds = [int(s) for s in FLAGS.seeds]
    costs = step_costs(FLAGS.step_cost_json)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    source = os.path.basename(FLAGS.step_cost_json)

    def report():
        rows = points(FLAGS.output_dir, FLAGS.tag, budgets, costs)
        write_report(rows, costs, FLAGS.output_dir, FLAGS.tag, source)

    if not FLAGS.report_only:
        first = parse_budgets(FLAGS.first) if FLAGS.first else None
        for seed, method, epochs in run_order(budgets, seeds, costs, first):
            done = {
                (r["method"], r["seed"])
                for r in load_runs(FLAGS.output_dir, FLAGS.tag, epochs)
            }
            if (method, seed) in done:
                continue
            command = [
                sys.executable,
                os.path.join(_HERE, "accuracy.py"),
                f"--epochs={epochs}",
                f"--validation_freq={validation_freq(epochs)}",
                f"--methods={method}",
                f"--seeds={seed}",
                f"--tag={budget_tag(FLAGS.tag, epochs)}",
                f"--output_dir={FLAGS.output_dir}",
            ]
            if FLAGS.backup_dir:
                command.append(f"--backup_dir={FLAGS.backup_dir}")
            print("$ " + " ".join(command[1:]), flush=True)
            if FLAGS.dry_run:
                continue
            subprocess.run(command, check=True)
            report()  # After every run: a killed job leaves a current report.
    report()


if __name__ == "__main__":
    _define_flags()
    app.run(main)
