"""keras-pcl's PCL step against the same step written in plain PyTorch.

What it measures: training images per second of one PCL step (ResNet-32,
`m = 3`, batch 128 by default) for

* the plain-PyTorch step of `benchmarks/torch_pcl_reference.py` (no Keras:
  `torch.nn`, `torch.optim.SGD`, `torch.no_grad()` mean teachers, a foreach
  EMA), in each memory format of `--reference_formats` (NCHW contiguous and
  channels-last by default; the faster one is "plain PyTorch"), and
* `keras_pcl.PeerCollaborativeModel` on each Keras backend of `--backends`
  (the `model.fit` timing of `keras_pcl.benchmark.time_fit`, as
  `benchmarks/throughput.py` and `keras-pcl benchmark` do),

with `--with_vanilla` also the plain network (backbone + classifier, one
augmented view) of each, for the PCL/plain step-time ratio.

How: every implementation runs in its own worker process (one per Keras
backend, one per reference memory format), started one after the other; a
worker builds its models, runs one untimed warm-up of `--warmup_steps`
steps per model (compilation/tracing), reports ready and then waits
(blocked on its stdin, using no CPU). The timed runs of `--steps` steps then
alternate: in each of `--rounds` rounds every (implementation, model) runs
once, one at a time, in an order rotated from round to round. The figure is
`batch_size * steps / seconds`, median over rounds (best run in the JSON).
`x plain PyTorch` is keras-pcl's PCL images/s over the fastest reference's
(the median over rounds of the per-round ratio is in the JSON too);
`PCL/plain` is the PCL step time over the plain step time of the same
implementation.

Both sides train with SGD (lr 0.1, Nesterov momentum 0.9) and weight decay
`--weight_decay` (5e-4): PyTorch's `weight_decay` on the reference (every
parameter), `keras.regularizers.L2(wd / 2)` on the convolution kernels of
keras-pcl's backbone (the same gradient, as keras-pcl documents; 0 turns
both off; `benchmarks/throughput.py` trains without it).

`--with_configured_threads` adds a TensorFlow worker that first calls
`keras_pcl.process.configure_tensorflow_threads(num_peers)` (what
`keras-pcl train` and the examples do: on a CPU with fewer cores than
peers, one inter-op thread per peer), and `--tf_op_threads=INTRAxINTER,...`
one worker per thread-pool pair given (`TF_NUM_INTRAOP_THREADS`,
`TF_NUM_INTEROP_THREADS`).

`--with_configured_malloc` adds a torch worker that first calls
`keras_pcl.process.configure_malloc()` (what `keras-pcl train` and the
examples do: glibc keeps freed activations instead of returning them to the
kernel, so a PCL step stops page-faulting them back).

`--with_bfloat16` adds the same runs in mixed precision: plain PyTorch
under `torch.autocast("cpu", torch.bfloat16)` (each reference format), and
keras-pcl's TensorFlow backend under the `mixed_bfloat16` policy (with the
library's thread pool if `--with_configured_threads`); labels end in
`_bfloat16`. `x plain PyTorch` compares like with like: float32 workers
with the fastest float32 reference, bfloat16 ones with the fastest
bfloat16 reference. It pays on CPUs with bfloat16 instructions
(AVX512_BF16, AMX).

`--with_tuned_allocator` runs every implementation a second time with
`TUNED_ALLOCATOR_ENV` (glibc malloc tunables; labels end in
`_tuned_malloc`), and the ratios then divide by the fastest plain-PyTorch
worker of either kind. Every entry records the minor page faults per step
(`minor_page_faults_per_step`, from `getrusage`).

Run it on an otherwise idle machine: the processes take turns, but other
load makes every figure meaningless (on 2 cores, a busy machine slows a
2-thread PyTorch step tenfold). The issue's figures (#14):

    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/vs_pytorch.py --with_vanilla \\
        --with_configured_threads --with_configured_malloc \\
        --json benchmarks/results/vs_pytorch.json

Smoke run (seconds, checks the plumbing only):

    python benchmarks/vs_pytorch.py --depth=8 --batch_size=8 --steps=2 \\
        --warmup_steps=1 --rounds=1 --with_vanilla
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROTOCOL = "@@vs_pytorch "
BACKENDS = ("tensorflow", "jax", "torch")
# glibc serves blocks over `mmap_threshold` (dynamic, 128 KiB to 32 MiB) with
# fresh pages and returns free memory above `trim_threshold` to the OS, so a
# CIFAR step's activations (8 MiB each at batch 128) are page-faulted and
# zeroed by the kernel again at every step. 32 MiB is glibc's largest
# threshold; the trim threshold keeps the freed heap for the next step.
TUNED_ALLOCATOR_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:"
    "glibc.malloc.trim_threshold=68719476736"
}
TUNED_SUFFIX = "_tuned_malloc"
# Set in a worker's environment: keras_pcl.process.configure_tensorflow_threads
# runs before the worker builds anything.
CONFIGURE_THREADS_ENV = "VS_PYTORCH_CONFIGURE_THREADS"
# Set in a worker's environment: keras_pcl.process.configure_malloc runs
# before the worker builds anything.
CONFIGURE_MALLOC_ENV = "VS_PYTORCH_CONFIGURE_MALLOC"
# Set in a worker's environment: mixed precision (bfloat16) for that worker.
BFLOAT16_ENV = "VS_PYTORCH_BFLOAT16"
BFLOAT16_SUFFIX = "_bfloat16"


def _precision():
    return "bfloat16" if os.environ.get(BFLOAT16_ENV) else "float32"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="Comma-separated Keras backends to time keras-pcl on ('' for none).",
    )
    parser.add_argument(
        "--reference_formats",
        default="contiguous,channels_last",
        help="Memory formats of the plain-PyTorch reference (one worker each).",
    )
    parser.add_argument("--rounds", type=int, default=3, help="Timed runs per model.")
    parser.add_argument("--steps", type=int, default=4, help="Steps per timed run.")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=32, help="CIFAR ResNet depth.")
    parser.add_argument("--num_peers", type=int, default=3)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument(
        "--with_vanilla",
        action="store_true",
        help="Also time the plain network of every implementation.",
    )
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument(
        "--keras_torch_data_format",
        default="channels_last",
        help="keras-pcl's image data format(s) on torch, comma-separated "
        "(channels_last, channels_first; one worker each). TF and JAX: "
        "channels_last.",
    )
    parser.add_argument(
        "--torch_keras_ops",
        action="store_true",
        help="Also time keras-pcl on torch with its PyTorch fast paths off "
        "(KERAS_PCL_FAST_PATHS=0, Keras' own ops), one more worker per format.",
    )
    parser.add_argument(
        "--keras_ops",
        action="store_true",
        help="Also time keras-pcl with its fast paths off (KERAS_PCL_FAST_PATHS=0, "
        "Keras' own ops) on every backend that has them (torch, tensorflow).",
    )
    parser.add_argument(
        "--with_configured_threads",
        action="store_true",
        help="Also time keras-pcl on TensorFlow after "
        "keras_pcl.process.configure_tensorflow_threads(num_peers), as "
        "`keras-pcl train` and the examples do (one more worker).",
    )
    parser.add_argument(
        "--with_configured_malloc",
        action="store_true",
        help="Also time keras-pcl on torch after "
        "keras_pcl.process.configure_malloc(), as `keras-pcl train` and the "
        "examples do (one more worker).",
    )
    parser.add_argument(
        "--tf_op_threads",
        default="",
        help="Also time keras-pcl on TensorFlow with these thread pools, "
        "comma-separated INTRAxINTER (e.g. 1x2: one thread per op, two ops at "
        "once; TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS), one more "
        "worker each.",
    )
    parser.add_argument(
        "--jit_compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="keras-pcl's `jit_compile` (auto: TF on CPU and torch without, JAX "
        "with XLA).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Compute threads of every worker (torch.set_num_threads, TF "
        "intra-op); 0: each library's default. JAX: set XLA_FLAGS yourself.",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="Seconds of rest before each timed run (lets the previous "
        "worker's threads go idle).",
    )
    parser.add_argument(
        "--with_bfloat16",
        action="store_true",
        help="Also time plain PyTorch under torch.autocast(bfloat16) and "
        "keras-pcl's TensorFlow backend under mixed_bfloat16.",
    )
    parser.add_argument(
        "--with_tuned_allocator",
        action="store_true",
        help="Also run every implementation with GLIBC_TUNABLES malloc settings "
        "(glibc keeps freed activations instead of returning them to the OS).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--label", default=None, help="Stored in the JSON.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _models(args):
    return ["pcl", "vanilla"] if args.with_vanilla else ["pcl"]


# ---------------------------------------------------------------------------
# Workers (subprocesses)
# ---------------------------------------------------------------------------


def _reference_timers(args, memory_format):
    import torch

    sys.path.insert(0, HERE)
    import torch_pcl_reference as ref

    if args.threads:
        torch.set_num_threads(args.threads)
    n = max(args.steps, args.warmup_steps) * args.batch_size
    x, y = ref.random_batches(n, args.image_size, args.num_classes, args.seed)
    timers, warmup = {}, {}
    for model in _models(args):
        step, _ = ref.build(
            model,
            depth=args.depth,
            num_classes=args.num_classes,
            num_peers=args.num_peers,
            image_size=args.image_size,
            memory_format=memory_format,
            weight_decay=args.weight_decay,
            seed=args.seed,
            autocast=None if _precision() == "float32" else _precision(),
        )
        warmup[model] = ref.time_steps(step, x, y, args.batch_size, args.warmup_steps)
        timers[model] = lambda step=step: ref.time_steps(
            step, x, y, args.batch_size, args.steps
        )
    info = {
        "implementation": "plain_pytorch",
        "memory_format": memory_format,
        "precision": _precision(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return timers, warmup, info


def _keras_timers(args, option):
    import keras

    import keras_pcl
    import keras_pcl.process
    from keras_pcl import speedups
    from keras_pcl.benchmark import random_images
    from keras_pcl.benchmark import time_fit
    from keras_pcl.methods import build_method

    backend, _, data_format = option.partition(":")
    assert keras.backend.backend() == backend, keras.backend.backend()
    configured_threads = None
    if os.environ.get(CONFIGURE_THREADS_ENV):  # Before TensorFlow's first op.
        configured_threads = keras_pcl.process.configure_tensorflow_threads(
            args.num_peers
        )
    configured_malloc = None
    if os.environ.get(CONFIGURE_MALLOC_ENV):
        configured_malloc = keras_pcl.process.configure_malloc()
    data_format = data_format or "channels_last"
    keras.config.set_image_data_format(data_format)
    threads = {}
    if backend == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        threads = {"intra_op": torch.get_num_threads()}
        version = torch.__version__
    elif backend == "tensorflow":
        import tensorflow as tf

        if args.threads and "TF_NUM_INTRAOP_THREADS" not in os.environ:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        threads = {
            "configured": configured_threads,
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "env": {
                k: os.environ[k]
                for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
                if k in os.environ
            },
        }
        version = tf.__version__
    else:
        import jax

        threads = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
        version = jax.__version__
    keras.utils.set_random_seed(args.seed)
    size = args.image_size
    shape = (3, size, size) if data_format == "channels_first" else (size, size, 3)
    n = max(args.steps, args.warmup_steps) * args.batch_size
    x, y = random_images(n, shape, args.num_classes, args.seed)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    regularizer = (
        keras.regularizers.L2(args.weight_decay / 2) if args.weight_decay else None
    )
    timers, warmup, resolved = {}, {}, {}
    if _precision() == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    for model_name in _models(args):
        backbone = keras_pcl.backbones.CIFARResNet(
            depth=args.depth,
            input_shape=shape,
            kernel_regularizer=regularizer,
            data_format=data_format,
        )
        model = build_method(
            model_name,
            backbone,
            num_classes=args.num_classes,
            num_peers=args.num_peers,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            jit_compile=jit,
        )
        warmup[model_name] = time_fit(model, x, y, args.batch_size, args.warmup_steps)
        resolved[model_name] = bool(getattr(model, "jit_compile", False))
        timers[model_name] = lambda model=model: time_fit(
            model, x, y, args.batch_size, args.steps
        )
    info = {
        "implementation": "keras_pcl",
        "backend": backend,
        "precision": _precision(),
        "dtype_policy": keras.config.dtype_policy().name,
        "data_format": data_format,
        "fast_paths": speedups.resolve().fast_paths,
        "jit_compile": args.jit_compile,
        "resolved_jit_compile": resolved,
        "keras_version": keras.__version__,
        "backend_version": version,
        "threads": threads,
        "configured_malloc": configured_malloc,
    }
    return timers, warmup, info


def worker_main(args):
    """Builds and warms up, then times one model per line read from stdin."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Whatever the libraries print goes to stderr.

    def send(message):
        protocol.write(PROTOCOL + json.dumps(message) + "\n")
        protocol.flush()

    kind, _, option = args.worker.partition(":")
    if kind == "reference":
        timers, warmup, info = _reference_timers(args, option)
    else:
        timers, warmup, info = _keras_timers(args, option)
    send({"ready": True, "warmup_seconds": warmup, "info": info})
    for line in sys.stdin:
        message = json.loads(line)
        if message["cmd"] == "quit":
            break
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = timers[message["model"]]()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        send({"seconds": seconds, "minor_page_faults": faults})


class Worker:
    """One implementation in its own process."""

    def __init__(self, label, spec, argv, env=None):
        self.label = label
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", spec]
        worker_env = dict(os.environ, **(env or {}))
        worker_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        path = worker_env.get("PYTHONPATH")
        worker_env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
        start = time.perf_counter()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=worker_env,
        )
        ready = self._receive()
        self.startup_seconds = time.perf_counter() - start
        self.warmup_seconds = ready["warmup_seconds"]
        self.info = ready["info"]

    def _receive(self):
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])
        code = self.process.wait()
        raise RuntimeError(f"worker {self.label} exited with code {code}")

    def time(self, model):
        """Seconds of one timed run, and the minor page faults it took."""
        self.process.stdin.write(json.dumps({"cmd": "time", "model": model}) + "\n")
        self.process.stdin.flush()
        reply = self._receive()
        return reply["seconds"], reply["minor_page_faults"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _split(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def _tf_thread_pools(value):
    """`--tf_op_threads` as (label suffix, environment) pairs."""
    pools = []
    for item in _split(value):
        intra, _, inter = item.partition("x")
        if not (intra.isdigit() and inter.isdigit() and int(intra) and int(inter)):
            raise SystemExit(
                "--tf_op_threads: each entry must be INTRAxINTER with positive "
                f"integers, e.g. 1x2. Received: {item!r}"
            )
        pools.append(
            (
                f"intra{intra}_inter{inter}",
                {"TF_NUM_INTRAOP_THREADS": intra, "TF_NUM_INTEROP_THREADS": inter},
            )
        )
    return pools


def _figures(seconds, args):
    step = statistics.median(seconds) / args.steps
    best = min(seconds) / args.steps
    return {
        "run_seconds": seconds,
        "step_seconds": step,
        "images_per_sec": args.batch_size / step,
        "best_images_per_sec": args.batch_size / best,
    }


def run(args, argv):
    backends = _split(args.backends)
    formats = _split(args.reference_formats)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not formats:
        raise SystemExit(
            f"--backends: unknown {unknown} (known: {BACKENDS}); "
            "--reference_formats needs at least one of contiguous, channels_last"
        )
    specs = [(f"pytorch_{f}", f"reference:{f}", None) for f in formats]
    if args.with_bfloat16:
        specs += [
            (f"pytorch_{f}{BFLOAT16_SUFFIX}", f"reference:{f}", {BFLOAT16_ENV: "1"})
            for f in formats
        ]
    torch_formats = _split(args.keras_torch_data_format)
    bad = [f for f in torch_formats if f not in ("channels_last", "channels_first")]
    if bad or not torch_formats:
        raise SystemExit(
            "--keras_torch_data_format: each must be channels_last or "
            f"channels_first. Received: {args.keras_torch_data_format!r}"
        )
    tf_pools = _tf_thread_pools(args.tf_op_threads)
    # The backends also timed with their fast paths off (Keras' own ops).
    keras_ops = {"torch", "tensorflow"} if args.keras_ops else set()
    if args.torch_keras_ops:
        keras_ops.add("torch")
    for b in backends:
        env = {"KERAS_BACKEND": b}
        if b == "torch":
            keras_workers = [
                ("keras_pcl_torch" + ("" if i == 0 else f"_{f}"), f"keras:torch:{f}")
                for i, f in enumerate(torch_formats)
            ]
        else:
            keras_workers = [(f"keras_pcl_{b}", f"keras:{b}")]
        for label, spec in keras_workers:
            specs.append((label, spec, env))
            if b in keras_ops:
                specs.append(
                    (f"{label}_keras_ops", spec, dict(env, KERAS_PCL_FAST_PATHS="0"))
                )
            if b == "tensorflow" and args.with_configured_threads:
                specs.append(
                    (
                        f"{label}_configured_threads",
                        spec,
                        dict(env, **{CONFIGURE_THREADS_ENV: "1"}),
                    )
                )
            if b == "torch" and args.with_configured_malloc:
                specs.append(
                    (
                        f"{label}_configured_malloc",
                        spec,
                        dict(env, **{CONFIGURE_MALLOC_ENV: "1"}),
                    )
                )
            if b == "tensorflow":
                specs += [
                    (f"{label}_{name}", spec, dict(env, **pools))
                    for name, pools in tf_pools
                ]
            if b == "tensorflow" and args.with_bfloat16:
                bf16_env = dict(env, **{BFLOAT16_ENV: "1"})
                if args.with_configured_threads:
                    bf16_env[CONFIGURE_THREADS_ENV] = "1"
                specs.append((f"{label}{BFLOAT16_SUFFIX}", spec, bf16_env))
    if args.with_tuned_allocator:
        specs += [
            (f"{label}{TUNED_SUFFIX}", spec, dict(env or {}, **TUNED_ALLOCATOR_ENV))
            for label, spec, env in specs
        ]
    models = _models(args)
    workers = []
    try:
        for label, spec, env in specs:
            print(f"starting {label} ...", flush=True)
            worker = Worker(label, spec, argv, env)
            print(
                f"  ready after {worker.startup_seconds:.1f} s (warm-up "
                + ", ".join(f"{m} {s:.1f} s" for m, s in worker.warmup_seconds.items())
                + ")",
                flush=True,
            )
            workers.append(worker)
        entries = [(w, m) for w in workers for m in models]
        seconds = {(w.label, m): [] for w, m in entries}
        page_faults = {(w.label, m): [] for w, m in entries}
        for r in range(args.rounds):
            shift = r % len(entries)
            for worker, model in entries[shift:] + entries[:shift]:
                time.sleep(args.pause)
                value, faults = worker.time(model)
                seconds[(worker.label, model)].append(value)
                page_faults[(worker.label, model)].append(faults)
                print(
                    f"round {r + 1}/{args.rounds} {worker.label:<34} {model:<8} "
                    f"{args.batch_size * args.steps / value:8.1f} img/s",
                    flush=True,
                )
    finally:
        for worker in workers:
            worker.close()

    results = {}
    for worker in workers:
        entry = dict(worker.info)
        entry["warmup_seconds"] = worker.warmup_seconds
        for model in models:
            entry[model] = _figures(seconds[(worker.label, model)], args)
            entry[model]["minor_page_faults_per_step"] = (
                statistics.median(page_faults[(worker.label, model)]) / args.steps
            )
        if "vanilla" in entry:
            entry["pcl_vs_plain"] = (
                entry["pcl"]["step_seconds"] / entry["vanilla"]["step_seconds"]
            )
        results[worker.label] = entry
    # Like with like: each worker against the fastest reference of its precision.
    fastest_of = {}
    for label, entry in results.items():
        if label.startswith("pytorch_"):
            best = fastest_of.get(entry["precision"])
            ips = entry["pcl"]["images_per_sec"]
            if best is None or ips > results[best]["pcl"]["images_per_sec"]:
                fastest_of[entry["precision"]] = label
    fastest = fastest_of["float32"]
    for label, entry in results.items():
        reference = fastest_of[entry["precision"]]
        entry["plain_pytorch_reference"] = reference
        entry["x_plain_pytorch"] = (
            entry["pcl"]["images_per_sec"] / results[reference]["pcl"]["images_per_sec"]
        )
        per_round = [
            ref_s / own_s
            for own_s, ref_s in zip(
                seconds[(label, "pcl")], seconds[(reference, "pcl")]
            )
        ]
        entry["x_plain_pytorch_per_round"] = per_round
        entry["x_plain_pytorch_median_of_rounds"] = statistics.median(per_round)
    keras_labels = [
        label
        for label in results
        if label.startswith("keras_pcl_") and results[label]["precision"] == "float32"
    ]
    fastest_keras = (
        max(keras_labels, key=lambda k: results[k]["pcl"]["images_per_sec"])
        if keras_labels
        else None
    )
    return {
        "label": args.label,
        "fastest_reference": fastest,
        "fastest_reference_by_precision": fastest_of,
        "fastest_keras_pcl": fastest_keras,
        "fastest_keras_pcl_x_plain_pytorch": (
            results[fastest_keras]["x_plain_pytorch"] if fastest_keras else None
        ),
        "max_keras_pcl_pcl_vs_plain": (
            max(results[k]["pcl_vs_plain"] for k in keras_labels)
            if keras_labels and args.with_vanilla
            else None
        ),
        "results": results,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "worker", "label")
        },
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }


def print_table(out, args):
    rows = [("implementation", "PCL img/s", "best", "x plain PyTorch")]
    if args.with_vanilla:
        rows[0] += ("plain img/s", "PCL/plain")
    references = set(out["fastest_reference_by_precision"].values())
    for label, entry in out["results"].items():
        row = (
            label + (" *" if label in references else ""),
            f"{entry['pcl']['images_per_sec']:.1f}",
            f"{entry['pcl']['best_images_per_sec']:.1f}",
            f"{entry['x_plain_pytorch']:.2f}",
        )
        if args.with_vanilla:
            row += (
                f"{entry['vanilla']['images_per_sec']:.1f}",
                f"{entry['pcl_vs_plain']:.2f}",
            )
        rows.append(row)
    print(
        f"\nResNet-{args.depth}, m={args.num_peers}, batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} rounds, cpus={os.cpu_count()} "
        "(medians; * = the plain-PyTorch step the ratios divide by, one per "
        "precision)"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            )
        )
    if out["fastest_keras_pcl"]:
        print(
            f"fastest keras-pcl backend: {out['fastest_keras_pcl']} at "
            f"{out['fastest_keras_pcl_x_plain_pytorch']:.2f}x plain PyTorch "
            "(goal >= 1.3x, at least 1.0x)"
        )
    if out["max_keras_pcl_pcl_vs_plain"] is not None:
        ratio = out["max_keras_pcl_pcl_vs_plain"]
        print(
            f"largest keras-pcl PCL/plain ratio: {ratio:.2f} "
            "(goal <= 4.0 on every backend)"
        )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    out = run(args, argv)
    print_table(out, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
