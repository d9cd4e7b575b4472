"""The one-shot GPU measurement: throughput, then the paper's recipe, one lease.

Runs from the repository root, on the lent GPU machine (one H200, JAX with
CUDA, no TensorFlow, no Keras, no network; see benchmarks/README.md):

    python3 benchmarks/gpu_run.py                  # writes $OUT/gpu_results.tgz

and, before any lease, the same steps on CPU with tiny sizes (what CI runs,
`tests/benchmarks_gpu_run_test.py`; about 75 s of CPU time):

    KERAS_BACKEND=torch python benchmarks/gpu_run.py --dry_run \\
        --bundle=/tmp/tiny.npz --out=/tmp/dry

On torch, which refuses `steps_per_execution` > 1, the throughput step at
the larger value is skipped; `KERAS_BACKEND=jax` runs it (at 2; minutes of
XLA compilation on a 2-core CPU).

It needs, in the repository (both ignored by git, carried by the device
tool's `carry`):

* `.whl/`: the wheels of keras, namex and optree for Python 3.12 (the
  machine has no Keras), unless Keras can be imported there already;
* `.gpudata/cifar10.npz`: the CIFAR-10 split, written where TensorFlow is
  (`python benchmarks/accuracy.py --write_bundle=.gpudata/cifar10.npz
  --train_images=0`: 45,000 training and 5,000 validation images).

Every check that can fail without a GPU runs first (`preflight`, seconds):
the bundle, the wheels, Keras, keras-pcl and the backend importing, the GPU
seen by JAX, `nvidia-smi`. A missing piece stops the run there with what to
do, before any device time is spent on measurements.

Time plan for one lease (15 minutes of device time, start-up included); one
command of at most 10 minutes, so `--budget=540` seconds for this script:

    start-up of the machine, transfer of the tree       ~2 min (outside)
    preflight: wheels installed, imports, GPU check     <= 45 s
    throughput, steps_per_execution=32: PCL fused and   <= 200 s
      separate views, vanilla; float32 and bf16
    throughput, steps_per_execution=1: the same         <= 140 s
    the paper's recipe (ResNet-32 PCL, bf16) for as     the rest, less 20 s
      many epochs as the measured speed fits
    summary and packing                                 <= 20 s
    left for a short rerun of one step, warm machine    ~3 min

Each step is a child process with its own timeout (never past the budget):
a step that fails or runs out of time is reported and the next one runs.
The exit status is 0 when every step finished, 1 when one did not, 2 when
the preflight stopped the run.
"""

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = ("keras", "namex", "optree")  # What the GPU machine lacks.
GOAL_IMAGES_PER_SEC = 22500  # The paper's 300 ResNet-32 epochs in 10 minutes.

# Sizes: the GPU run, and the dry run (tiny, same steps and flags).
SIZES = {
    "gpu": dict(
        depth=32,
        batch_size=128,
        image_size=32,
        steps_per_execution=32,
        steps={32: 96, 1: 24},
        warmup_steps=0,  # throughput.py's default: steps_per_execution, >= 2
        repeats=3,
        recipe_backbone="resnet32",
        max_epochs=300,
        compile_seconds=90,
    ),
    "dry_run": dict(
        depth=8,
        batch_size=8,
        image_size=8,
        steps_per_execution=2,  # 1 on torch, which refuses more.
        steps={2: 2, 1: 1},
        warmup_steps=1,
        repeats=1,
        recipe_backbone="resnet8",
        max_epochs=1,
        compile_seconds=5,
    ),
}
# Planned seconds of each step (the dry run takes a fraction).
PLAN = {"preflight": 45, "throughput_large": 200, "throughput_spe1": 140, "pack": 20}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="CPU, tiny sizes: every step and flag of the GPU run, in a minute.",
    )
    parser.add_argument(
        "--bundle",
        default=os.path.join(ROOT, ".gpudata", "cifar10.npz"),
        help="The CIFAR-10 split of `accuracy.py --write_bundle`.",
    )
    parser.add_argument(
        "--wheels",
        default=os.path.join(ROOT, ".whl"),
        help="Wheels to install when Keras is missing (keras, namex, optree).",
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT", "/tmp/out"),
        help="Where gpu_results.tgz and summary.json go (default: $OUT).",
    )
    parser.add_argument(
        "--workdir",
        default="/tmp/gpu_run",
        help="Logs, JSON files and the installed wheels (only the archive and "
        "summary.json go to --out, as the device tool returns 8 files).",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="Seconds for the whole run (default 540: a device command runs 600 "
        "at most; a dry run 1200, each step 3 times its planned time, as a "
        "shared CPU is slower than the GPU at anything).",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="Keras backend (default: jax; a dry run takes KERAS_BACKEND).",
    )
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 1200 if args.dry_run else 540
    if args.backend is None:
        args.backend = os.environ.get("KERAS_BACKEND", "jax") if args.dry_run else "jax"
    return args


class Run:
    """The steps of one run: their children, logs, times and outcomes."""

    def __init__(self, args):
        self.args = args
        self.sizes = SIZES["dry_run" if args.dry_run else "gpu"]
        self.start = time.monotonic()
        self.results = os.path.join(args.workdir, "gpu_results")
        os.makedirs(self.results, exist_ok=True)
        os.makedirs(args.out, exist_ok=True)
        self.env = dict(
            os.environ,
            KERAS_BACKEND=args.backend,
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
        )
        self.site = None
        self.steps = []

    def left(self):
        return self.args.budget - (time.monotonic() - self.start)

    def child(self, name, command, planned):
        """Runs `command` (a list) with a timeout; True if it exited with 0."""
        scale = 3 if self.args.dry_run else 1
        timeout = max(1.0, min(scale * planned, self.left() - PLAN["pack"]))
        log = os.path.join(self.results, f"{name}.log")
        began = time.monotonic()
        print(f"== {name} (up to {timeout:.0f} s) {time.strftime('%H:%M:%S')}")
        with open(log, "w") as f:
            f.write(" ".join(command) + "\n")
            f.flush()
            try:
                code = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = time.monotonic() - began
        self.steps.append(
            {"step": name, "planned": planned, "seconds": seconds, "exit": code}
        )
        with open(log) as f:
            tail = f.read().splitlines()[-12:]
        print("\n".join(tail))
        print(f"== {name}: exit {code} after {seconds:.0f} s")
        return code == 0


def preflight(run):
    """Checks all that can fail before the measurements; messages or []."""
    args, problems = run.args, []
    if not os.path.isfile(args.bundle):
        problems.append(
            f"No CIFAR-10 bundle at --bundle={args.bundle}. Write it where "
            "TensorFlow is installed: python benchmarks/accuracy.py "
            f"--write_bundle={args.bundle} --train_images=0, then carry its "
            "folder."
        )
    if not _imports(run, "keras"):
        wheels = {
            name: glob.glob(os.path.join(args.wheels, f"{name}-*.whl"))
            for name in WHEELS
        }
        missing = [name for name, found in wheels.items() if len(found) != 1]
        if missing:
            problems.append(
                f"Keras cannot be imported here and --wheels={args.wheels} "
                f"lacks exactly one wheel of each of {missing}. Where pip "
                "works: python3 -m pip download --no-deps --only-binary=:all: "
                "--python-version 3.12 --implementation cp --platform "
                "manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "
                "keras==3.15.1 namex optree (see benchmarks/README.md), and "
                "carry .whl."
            )
        else:
            run.site = os.path.join(args.workdir, "site")
            code = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index"]
                + ["--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
                + ["--target", run.site]
                + [w for found in wheels.values() for w in found],
                capture_output=True,
                text=True,
            )
            if code.returncode:
                problems.append(f"Installing the wheels failed: {code.stderr[-800:]}")
    path = [p for p in (run.site, ROOT, run.env.get("PYTHONPATH")) if p]
    run.env["PYTHONPATH"] = os.pathsep.join(path)
    if problems:
        return problems
    check = (
        "import json, keras, keras_pcl\n"
        "info = {'keras': keras.__version__, 'backend': keras.backend.backend()}\n"
        "if info['backend'] == 'jax':\n"
        "    import jax\n"
        "    info['devices'] = [str(d) for d in jax.devices()]\n"
        "    info['platform'] = jax.devices()[0].platform\n"
        "elif info['backend'] == 'torch':\n"
        "    import torch\n"
        "    info['platform'] = 'gpu' if torch.cuda.is_available() else 'cpu'\n"
        "else:\n"
        "    import tensorflow as tf\n"
        "    info['platform'] = 'gpu' if tf.config.list_logical_devices('GPU') "
        "else 'cpu'\n"
        "print(json.dumps(info))\n"
    )
    if not run.child("preflight", [sys.executable, "-c", check], PLAN["preflight"]):
        return [
            "Keras, keras-pcl or the backend does not import: see "
            f"{os.path.join(run.results, 'preflight.log')}."
        ]
    with open(os.path.join(run.results, "preflight.log")) as f:
        info = json.loads(f.read().splitlines()[-1])
    print(f"Keras {info['keras']} on {info['backend']}, {info['platform']}")
    if not args.dry_run and info["platform"] != "gpu":
        problems.append(
            f"The {info['backend']} backend sees no GPU (platform "
            f"{info['platform']!r}): this run measures a GPU. Use --dry_run "
            "on a CPU."
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
        out = subprocess.run(
            [smi, query, "--format=csv"], capture_output=True, text=True
        ).stdout
        with open(os.path.join(run.results, "gpu.txt"), "w") as f:
            f.write(out)
        print(out.strip())
    elif not args.dry_run:
        problems.append("nvidia-smi is not on the PATH: is this the GPU machine?")
    return problems


def _imports(run, module):
    env = dict(run.env)
    return (
        subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            env=env,
            capture_output=True,
        ).returncode
        == 0
    )


def throughput(run, spe, name):
    """`throughput.py` at `steps_per_execution=spe`; its JSON path, or None."""
    sizes = run.sizes
    path = os.path.join(run.results, f"{name}.json")
    command = [
        sys.executable,
        "benchmarks/throughput.py",
        f"--depth={sizes['depth']}",
        f"--batch_size={sizes['batch_size']}",
        f"--image_size={sizes['image_size']}",
        f"--steps_per_execution={spe}",
        f"--steps={sizes['steps'].get(spe, 1)}",
        f"--warmup_steps={sizes['warmup_steps']}",
        f"--repeats={sizes['repeats']}",
        "--models=pcl,vanilla",
        "--fusion=both",
        "--mixed_precision=none,bfloat16",
        f"--label=benchmarks/gpu_run.py{' --dry_run' if run.args.dry_run else ''}",
        f"--json={path}",
    ]
    ok = run.child(name, command, PLAN[name])
    return path if ok and os.path.isfile(path) else None


def recipe_epochs(run, images_per_sec, train_images, seconds):
    """Epochs of the recipe that `seconds` leave at `images_per_sec`."""
    if not images_per_sec:
        return 1
    # An epoch trains on every training image, then scores the 5,000
    # validation images (about a third of a training pass each); 15% margin.
    epoch = 1.15 * (train_images / images_per_sec) * (1 + 5000 / 3 / 45000)
    usable = seconds - run.sizes["compile_seconds"]
    return int(max(1, min(run.sizes["max_epochs"], math.floor(usable / epoch))))


def recipe(run, spe1_json):
    """The paper's recipe (accuracy.py: PCL, ResNet-32, bf16) for what is left."""
    import numpy as np

    with np.load(run.args.bundle, allow_pickle=True) as bundle:
        train_images = len(bundle["train_labels"])
    rate = None
    if spe1_json:  # accuracy.py trains with steps_per_execution=1.
        with open(spe1_json) as f:
            rate = json.load(f)["by_policy"]["bfloat16"]["pcl_images_per_sec"]
    seconds = run.left() - PLAN["pack"]
    epochs = recipe_epochs(run, rate, train_images, seconds)
    print(f"Recipe: {epochs} epochs in {seconds:.0f} s at {rate} PCL images/s")
    command = [
        sys.executable,
        "benchmarks/accuracy.py",
        f"--bundle={run.args.bundle}",
        "--train_images=0",
        f"--backbone={run.sizes['recipe_backbone']}",
        f"--batch_size={run.sizes['batch_size']}",
        "--ema_decay=0.999",
        "--methods=pcl",
        "--seeds=0",
        f"--epochs={epochs}",
        "--mixed_precision=bfloat16",
        "--tag=gpu_recipe",
        f"--output_dir={run.results}",
        f"--export_dir={os.path.join(run.results, 'exported')}",
    ]
    run.child("recipe", command, seconds)
    return epochs


def summary(run, jsons, epochs):
    """images/s per steps_per_execution, policy and model; the recipe's runs."""
    out = {
        "dry_run": run.args.dry_run,
        "backend": run.args.backend,
        "goal_images_per_sec": GOAL_IMAGES_PER_SEC,
        "steps": run.steps,
        "recipe_epochs": epochs,
        "throughput": {},
    }
    for key, path in jsons.items():
        if not path:
            continue
        with open(path) as f:
            result = json.load(f)
        rows = {}
        for name, details in result["details"].items():
            rows[name] = {
                "images_per_sec": details["images_per_sec"],
                "fraction_of_goal": details["images_per_sec"] / GOAL_IMAGES_PER_SEC,
            }
        out["throughput"][key] = {
            "models": rows,
            "by_policy": result["by_policy"],
        }
    runs = os.path.join(run.results, "gpu_recipe_runs.jsonl")
    if os.path.isfile(runs):
        with open(runs) as f:
            out["recipe_runs"] = [json.loads(line) for line in f if line.strip()]
    path = os.path.join(run.results, "summary.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Run(args)
    mode = "dry run (CPU, tiny sizes)" if args.dry_run else "GPU run"
    print(f"benchmarks/gpu_run.py: {mode}, budget {args.budget:.0f} s")
    problems = preflight(run)
    if problems:
        for problem in problems:
            print(f"PREFLIGHT FAILED: {problem}", file=sys.stderr)
        return 2
    spe = run.sizes["steps_per_execution"]
    jsons = {}
    if args.backend == "torch":  # Keras' torch backend runs one step per call.
        print(f"== throughput_large: skipped, torch refuses steps_per_execution={spe}")
    else:
        jsons[f"steps_per_execution={spe}"] = throughput(run, spe, "throughput_large")
    jsons["steps_per_execution=1"] = throughput(run, 1, "throughput_spe1")
    epochs = recipe(run, jsons["steps_per_execution=1"])
    result = summary(run, jsons, epochs)
    for key, table in result["throughput"].items():
        for name, row in table["models"].items():
            print(f"{key:24s} {name:24s} {row['images_per_sec']:10.1f} images/s")
    archive = os.path.join(args.out, "gpu_results.tgz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(run.results, arcname="gpu_results")
    shutil.copy(os.path.join(run.results, "summary.json"), args.out)
    failed = [s["step"] for s in run.steps if s["exit"] != 0]
    seconds = time.monotonic() - run.start
    print(f"== done in {seconds:.0f} s; {archive}; failed steps: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
