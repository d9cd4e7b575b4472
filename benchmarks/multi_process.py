"""PCL training throughput on one JAX process vs several on this machine.

Starts `--processes` JAX processes (one CPU device each, gloo collectives
over 127.0.0.1) that train one PCL model together through
`keras_pcl.training` (`cluster.initialize`, `make_distribution`, each
process streaming its part of every global batch), and the same training
in a single process, and reports images per second of the global batch
for both. Each run first takes an untimed `fit` of `--warmup_steps` steps
(compilation), then `--repeats` timed `fit` calls of `--steps` steps; the
figure is the median.

On one machine this measures the *overhead* of the multi-process path
(gloo all-reduces over loopback, one process's worth of work split in
two), not a speedup: the processes share the same cores. With 2 cores and
a single process that already uses both, two processes are expected to be
slower. The speedup comes from several hosts (or one process per
accelerator), where each process brings its own devices.

Usage:

    python benchmarks/multi_process.py                 # CIFAR ResNet-8, 32x32
    python benchmarks/multi_process.py --depth=20 --batch_size=128 --steps=8
    python benchmarks/multi_process.py --smoke         # seconds: 8x8, 2 steps

With `--json PATH`, writes the figures there.
"""

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8, help="CIFAR ResNet depth.")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64, help="Global batch.")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="Per run (s).")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="8x8 images, 2 steps, 1 repeat."
    )
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.steps, args.repeats, args.batch_size = 8, 2, 1, 16
    return args


def worker(args, address, process_id):
    """One process of the run (`address=None`: alone); prints a JSON line."""
    sys.path.insert(0, ROOT)
    from keras_pcl import training
    from keras_pcl.training import cluster

    if address is not None:
        cluster.initialize(cluster.Cluster(address, args.processes, process_id))
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_pcl

    distribution = (
        training.make_distribution("auto")
        if address is not None
        else training.Distribution("cpu", 1)
    )
    rng = np.random.default_rng(0)
    n = args.batch_size * 4
    size = args.image_size
    images = rng.integers(0, 256, (n, size, size, 3), dtype="uint8")
    labels = rng.integers(0, 10, (n,)).astype("int32")
    config = training.TrainConfig(
        dataset="random", batch_size=args.batch_size, epochs=10**6, seed=0
    )
    stream = training.training_stream(
        tf.data.Dataset.from_tensor_slices((images, labels)),
        config,
        steps_per_epoch=4,
        num_processes=distribution.num_processes,
        process_index=distribution.process_index,
    ).prefetch(tf.data.AUTOTUNE)
    keras.utils.set_random_seed(0)
    model = keras_pcl.PeerCollaborativeModel(
        keras_pcl.backbones.CIFARResNet(depth=args.depth, input_shape=(size, size, 3)),
        num_classes=10,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    fit = dict(epochs=1, verbose=0, shuffle=False)
    model.fit(stream, steps_per_epoch=args.warmup_steps, **fit)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.fit(stream, steps_per_epoch=args.steps, **fit)
        seconds.append(time.perf_counter() - start)
    median = sorted(seconds)[len(seconds) // 2]
    print(
        "RESULT "
        + json.dumps(
            {
                "process_id": distribution.process_index,
                "images_per_second": args.batch_size * args.steps / median,
                "seconds": seconds,
            }
        ),
        flush=True,
    )


def free_address():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(args, processes):
    """Runs the benchmark on `processes` processes; process 0's result."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    address = free_address() if processes > 1 else "none"
    common = [
        sys.executable,
        os.path.abspath(__file__),
        f"--processes={processes}",
        f"--depth={args.depth}",
        f"--image_size={args.image_size}",
        f"--batch_size={args.batch_size}",
        f"--steps={args.steps}",
        f"--warmup_steps={args.warmup_steps}",
        f"--repeats={args.repeats}",
    ]
    children = [
        subprocess.Popen(
            common + ["--worker", address, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            message = f"A benchmark process ran past --timeout={args.timeout}s"
            raise SystemExit(message) from None
        if child.returncode:
            raise SystemExit(f"A benchmark process failed:\n{err[-3000:]}")
        outputs.append(out)
    [line] = [x for x in outputs[0].splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        address, process_id = args.worker
        worker(args, None if address == "none" else address, int(process_id))
        return 0
    single = run(args, 1)
    several = run(args, args.processes)
    ratio = several["images_per_second"] / single["images_per_second"]
    print(
        f"CIFAR ResNet-{args.depth}, {args.image_size}x{args.image_size}, PCL m=3, "
        f"global batch {args.batch_size}, {os.cpu_count()} CPU cores (JAX):"
    )
    print(f"  1 process:   {single['images_per_second']:8.1f} images/s")
    print(
        f"  {args.processes} processes: {several['images_per_second']:8.1f} images/s "
        f"({ratio:.2f}x; overhead on one machine, not a speedup)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "backend": "jax",
                    "machine": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(),
                    "settings": {
                        k: getattr(args, k)
                        for k in ("depth", "image_size", "batch_size", "steps")
                    },
                    "single_process": single,
                    "processes": args.processes,
                    "multi_process": several,
                    "ratio": ratio,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
