"""Issue #14, item 2: would batched peer heads pay? A PyTorch micro-benchmark.

The `m` peer heads have one architecture and separate weights. Stacked, a
head's convolution becomes one grouped convolution (`groups=m`) over the
peers' inputs concatenated along channels, and its batch norm one batch
norm over the concatenated channels (per-channel statistics: the same
numbers). This times the convolutions alone, forward and backward, for the
shapes of a CIFAR ResNet-32 head (stage 2: 16x16, 32 channels; stage 3:
8x8, 64 channels) at batch 128, `m = 3`: `m` separate `conv2d` calls
against one grouped call, channels-last, median of 20 runs after 3 warm-up
runs. It also prints the largest difference of the outputs (0 means
bitwise equal).

Usage:

    python benchmarks/batched_heads.py \\
        --json benchmarks/results/batched_heads_torch.json
"""

import argparse
import json
import platform
import statistics
import time


def _median_seconds(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(torch, batch, num_peers, size, channels):
    """Seconds of `num_peers` separate convolutions and of one grouped one."""
    conv2d = torch.nn.functional.conv2d
    channels_last = torch.channels_last
    xs = [
        torch.randn(batch, channels, size, size)
        .to(memory_format=channels_last)
        .requires_grad_()
        for _ in range(num_peers)
    ]
    ws = [
        torch.randn(channels, channels, 3, 3, requires_grad=True)
        for _ in range(num_peers)
    ]
    x_grouped = (
        torch.cat([x.detach() for x in xs], 1)
        .to(memory_format=channels_last)
        .requires_grad_()
    )
    w_grouped = torch.cat([w.detach() for w in ws], 0).requires_grad_()

    def separate():
        sum(conv2d(x, w, padding=1).sum() for x, w in zip(xs, ws)).backward()

    def grouped():
        conv2d(x_grouped, w_grouped, padding=1, groups=num_peers).sum().backward()

    with torch.no_grad():
        y_separate = torch.cat([conv2d(x, w, padding=1) for x, w in zip(xs, ws)], 1)
        y_grouped = conv2d(x_grouped, w_grouped, padding=1, groups=num_peers)
    return {
        "size": size,
        "channels": channels,
        "separate_ms": 1000 * _median_seconds(separate),
        "grouped_ms": 1000 * _median_seconds(grouped),
        "max_abs_difference": float((y_separate - y_grouped).abs().max()),
    }


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_peers", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [
        compare(torch, args.batch_size, args.num_peers, size, channels)
        for size, channels in [(16, 32), (8, 64)]
    ]
    print("shape            separate ms  grouped ms  separate/grouped  max |diff|")
    for r in rows:
        r["separate_over_grouped"] = r["separate_ms"] / r["grouped_ms"]
        print(
            f"{r['size']}x{r['size']}x{r['channels']:<9} {r['separate_ms']:11.2f} "
            f"{r['grouped_ms']:11.2f} {r['separate_over_grouped']:17.2f} "
            f"{r['max_abs_difference']:11.3g}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch_size": args.batch_size,
                    "num_peers": args.num_peers,
                    "torch_version": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "machine": f"{platform.machine()}, {platform.processor()}",
                    "rows": rows,
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
