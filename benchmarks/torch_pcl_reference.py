"""A plain-PyTorch PCL training step: what a user would write instead of keras-pcl.

No Keras anywhere: `torch.nn` modules, `nn.BatchNorm2d`, `torch.optim.SGD`.
It is the step of `/work/shared/PCL_METHOD.md` (sections 2-4, 6-7), the same
work as one step of `keras_pcl.PeerCollaborativeModel` (see `make_step`):

* the CIFAR ResNet of `keras_pcl/backbones/cifar_resnet.py` (depth 6n+2,
  basic blocks, 16/32/64 channels, 3x3 stem, 1x1-conv + BN projection
  shortcuts where the shape changes, bias-free He-normal fan-out convs, BN
  with Keras' eps 1e-3 and momentum 0.99), cut after stage 2: the shared
  trunk is stem + stages 1-2, each of the `m` peers owns stage 3 + global
  average pooling + `Linear(64, classes)`; an ensemble `Linear(64 m,
  classes)` reads the concatenated peer features;
* `m` independent draws of pad-4 random crop + horizontal flip per image,
  vectorised (one gather per view, on the uint8 batch), then `x / 255`;
* the mean teachers: EMA copies of the trunk and of every peer, updated at
  the start of step `k` with `alpha_k = min(1 - 1/(k+1), 0.999)` (one
  `torch._foreach_lerp_` over the parameters; BN buffers are not averaged,
  each teacher keeps the statistics of its own forward passes, as
  keras-pcl does), then run under `torch.no_grad()` in train mode (batch
  statistics) on each peer's own view;
* loss = sum_j CE(z_j) + CE(z_e) + w(t) (sum_j KD_T(z_j, z_e) +
  sum_j mean_{l != j} KD_T(z_j, z'_l)), T = 3, teachers detached, w(t) the
  Mean-Teacher ramp-up over 80 * 391 steps (keras-pcl's default);
* `torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
  foreach=True)` on every student parameter (PyTorch's usual weight decay,
  which also decays BN and classifier parameters; keras-pcl users put
  `L2(5e-4 / 2)` on the convolution kernels only: the same cost).

`--autocast=bfloat16` runs every forward pass (students, ensemble, mean
teachers) under `torch.autocast("cpu", torch.bfloat16)`, PyTorch's own
mixed precision, and the loss on float32 logits: what a PyTorch user would
set against keras-pcl's `mixed_bfloat16` policy.

`--model=vanilla` times the plain network (the whole backbone +
`Linear(64, classes)`) on one augmented view with cross-entropy, for the
PCL/plain ratio.

What it measures: training images per second (`batch_size * steps / seconds`
of `--steps` consecutive steps, median over `--repeats` timed runs), after
`--warmup_steps` untimed steps; the same definition as
`benchmarks/throughput.py`. Inputs are random uint8 images and labels held
in memory. Run it on an otherwise idle machine; to compare it with keras-pcl
use `benchmarks/vs_pytorch.py`, which times both in one run, alternating.

Usage:

    python benchmarks/torch_pcl_reference.py                   # PCL, batch 128
    python benchmarks/torch_pcl_reference.py --model=vanilla
    python benchmarks/torch_pcl_reference.py --memory_format=channels_last
    python benchmarks/torch_pcl_reference.py --batch_size=8 --steps=2 \\
        --repeats=1 --depth=8                                   # smoke run
"""

import argparse
import contextlib
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)
# keras-pcl's default ramp-up: 80 epochs of CIFAR at batch 128.
DEFAULT_RAMPUP_STEPS = 80 * 391
MEMORY_FORMATS = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
}
AUTOCAST_DTYPES = {None: None, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


def _conv(in_channels, out_channels, kernel_size, stride):
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=False,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _bn(channels):
    # Keras' BatchNormalization defaults (epsilon 1e-3, moving average 0.99).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 projection shortcut."""

    def __init__(self, in_channels, width, stride):
        super().__init__()
        self.conv1 = _conv(in_channels, width, 3, stride)
        self.bn1 = _bn(width)
        self.conv2 = _conv(width, width, 3, 1)
        self.bn2 = _bn(width)
        self.shortcut = None
        if stride != 1 or in_channels != width:
            self.shortcut = nn.Sequential(
                _conv(in_channels, width, 1, stride), _bn(width)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + shortcut)


def _stage(in_channels, width, blocks, stride):
    layers = [BasicBlock(in_channels, width, stride)]
    layers += [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _blocks_per_stage(depth):
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1. Received: {depth}")
    return (depth - 2) // 6


def make_trunk(depth):
    """Stem + stages 1-2 of the CIFAR ResNet (the shared low-level layers)."""
    n = _blocks_per_stage(depth)
    w1, w2, _ = STAGE_WIDTHS
    return nn.Sequential(
        _conv(3, w1, 3, 1),
        _bn(w1),
        nn.ReLU(inplace=True),
        _stage(w1, w1, n, 1),
        _stage(w1, w2, n, 2),
    )


class Peer(nn.Module):
    """Stage 3 + global average pooling + a linear classifier."""

    def __init__(self, depth, num_classes):
        super().__init__()
        n = _blocks_per_stage(depth)
        self.stage3 = _stage(STAGE_WIDTHS[1], STAGE_WIDTHS[2], n, 2)
        self.fc = nn.Linear(STAGE_WIDTHS[2], num_classes)

    def features(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.stage3(x), 1), 1)

    def forward(self, x):
        features = self.features(x)
        return features, self.fc(features)


class PCLNet(nn.Module):
    """Shared trunk, `m` peers and the ensemble classifier (the students)."""

    def __init__(self, depth=32, num_classes=10, num_peers=3):
        super().__init__()
        if num_peers < 2:
            raise ValueError(f"num_peers must be >= 2. Received: {num_peers}")
        self.trunk = make_trunk(depth)
        # Each peer gets its own fresh initialisation (spec section 6).
        self.peers = nn.ModuleList(Peer(depth, num_classes) for _ in range(num_peers))
        self.ensemble = nn.Linear(STAGE_WIDTHS[2] * num_peers, num_classes)


class MeanTeachers(nn.Module):
    """EMA copies of the trunk and of every peer (not of the ensemble)."""

    def __init__(self, net):
        super().__init__()
        self.trunk = copy.deepcopy(net.trunk)
        self.peers = copy.deepcopy(net.peers)
        self.requires_grad_(False)

    @staticmethod
    def student_parameters(net):
        """The student parameters, in the order of `self.parameters()`."""
        return list(net.trunk.parameters()) + list(net.peers.parameters())


class PlainNet(nn.Module):
    """The whole CIFAR ResNet + `Linear(64, classes)` (the vanilla network)."""

    def __init__(self, depth=32, num_classes=10):
        super().__init__()
        self.trunk = make_trunk(depth)
        self.head = Peer(depth, num_classes)

    def forward(self, x):
        return self.head(self.trunk(x))[1]


# ---------------------------------------------------------------------------
# Augmentation, loss, ramp-up
# ---------------------------------------------------------------------------


def augment(images, padding=4, memory_format=torch.contiguous_format, generator=None):
    """Pad + random crop + random horizontal flip per image, then `x / 255`.

    Args:
        images: uint8 tensor `(batch, height, width, channels)` (raw pixels,
            as keras-pcl takes them).
        padding: zero padding on each side (the crop offset is uniform over
            the `(2 padding + 1)^2` positions).
        memory_format: of the returned float32 `(batch, channels, height,
            width)` tensor.
        generator: optional `torch.Generator`.

    Returns:
        The augmented, rescaled batch, NCHW.
    """
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = offsets[:, :1] + torch.arange(height)
    columns = torch.arange(width)
    columns = torch.where(flip[:, None], columns.flip(0), columns) + offsets[:, 1:]
    index = torch.arange(batch)[:, None, None]
    crops = padded[index, rows[:, :, None], columns[:, None, :]]  # (B, H, W, C)
    out = crops.permute(0, 3, 1, 2).to(torch.float32, memory_format=memory_format)
    return out.mul_(1.0 / 255.0)


def distillation(student_log_probs, teacher_log_probs, temperature):
    """`T^2 KL(softmax(t / T) || softmax(z / T))`, batchmean, from log-probs."""
    kl = F.kl_div(
        student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True
    )
    return temperature**2 * kl


def pcl_objective(
    labels,
    peer_logits,
    ensemble_logits,
    mean_teacher_logits,
    temperature=3.0,
    consistency_weight=1.0,
):
    """The PCL loss of spec section 3; the teachers are detached here.

    Returns:
        `(loss, ce, pe, pm)`, scalar tensors.
    """
    m = len(peer_logits)
    t = temperature
    ce = F.cross_entropy(ensemble_logits, labels)
    for z in peer_logits:
        ce = ce + F.cross_entropy(z, labels)
    ensemble_log_probs = F.log_softmax(ensemble_logits.detach() / t, dim=1)
    teacher_log_probs = [
        F.log_softmax(z.detach() / t, dim=1) for z in mean_teacher_logits
    ]
    pe = 0.0
    pm = 0.0
    for j, z in enumerate(peer_logits):
        log_probs = F.log_softmax(z / t, dim=1)
        pe = pe + distillation(log_probs, ensemble_log_probs, t)
        others = [teacher_log_probs[l] for l in range(m) if l != j]
        pm = pm + sum(distillation(log_probs, o, t) for o in others) / (m - 1)
    loss = ce + consistency_weight * (pe + pm)
    return loss, ce, pe, pm


def consistency_rampup(step, rampup_steps, max_weight=1.0):
    """`w(t) = max_weight exp(-5 (1 - min(t, t_r) / t_r)^2)` (spec section 3)."""
    if rampup_steps == 0:
        return max_weight
    progress = min(step, rampup_steps) / rampup_steps
    return max_weight * math.exp(-5.0 * (1.0 - progress) ** 2)


def ema_decay_at(step, ema_decay):
    """`alpha_k = min(1 - 1/(k + 1), alpha)` (spec section 4)."""
    return min(1.0 - 1.0 / (step + 1.0), ema_decay)


# ---------------------------------------------------------------------------
# The training steps
# ---------------------------------------------------------------------------


def make_optimizer(parameters, lr=0.1, weight_decay=5e-4):
    """SGD with Nesterov momentum 0.9, the paper's recipe (spec section 7)."""
    return torch.optim.SGD(
        parameters,
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
        foreach=True,
    )


def make_step(
    net,
    teachers,
    optimizer,
    temperature=3.0,
    ema_decay=0.999,
    rampup_steps=DEFAULT_RAMPUP_STEPS,
    consistency_weight=1.0,
    padding=4,
    memory_format=torch.contiguous_format,
    generator=None,
    autocast=None,
):
    """Returns `step(images, labels) -> dict`: one PCL training step.

    The step counter `k` (optimizer updates done so far) lives in the closure,
    as `step.state["step"]`.

    Args:
        net: a `PCLNet` in train mode.
        teachers: its `MeanTeachers`.
        optimizer: an optimizer over `net.parameters()`.
        temperature, ema_decay, rampup_steps, consistency_weight: as in
            `keras_pcl.PeerCollaborativeModel`.
        padding: augmentation padding.
        memory_format: of the network inputs (and so of every activation).
        generator: optional `torch.Generator` for the augmentation.
        autocast: None (float32) or a dtype (`torch.bfloat16`): the forward
            passes run under `torch.autocast("cpu", autocast)`, the loss on
            float32 logits.

    The returned dict holds `loss`, `ce`, `pe`, `pm` (detached scalars),
    `consistency_weight`, `alpha`, and the step's `peer_logits`,
    `ensemble_logits`, `mean_teacher_logits` and `labels`.
    """
    m = len(net.peers)
    student_params = MeanTeachers.student_parameters(net)
    teacher_params = list(teachers.parameters())
    state = {"step": 0}

    def step(images, labels):
        k = state["step"]
        alpha = ema_decay_at(k, ema_decay)
        with torch.no_grad():  # theta' <- alpha theta' + (1 - alpha) theta
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - alpha)
        views = [augment(images, padding, memory_format, generator) for _ in range(m)]
        features, peer_logits = [], []
        with _autocast(autocast):
            for peer, view in zip(net.peers, views):
                f, z = peer(net.trunk(view))
                features.append(f)
                peer_logits.append(z.float())
            ensemble_logits = net.ensemble(torch.cat(features, dim=1)).float()
            with torch.no_grad():  # Train mode: batch statistics.
                teacher_logits = [
                    peer(teachers.trunk(view))[1].float()
                    for peer, view in zip(teachers.peers, views)
                ]
        weight = consistency_rampup(k, rampup_steps, consistency_weight)
        loss, ce, pe, pm = pcl_objective(
            labels, peer_logits, ensemble_logits, teacher_logits, temperature, weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] = k + 1
        return {
            "loss": loss.detach(),
            "ce": ce.detach(),
            "pe": pe.detach(),
            "pm": pm.detach(),
            "consistency_weight": weight,
            "alpha": alpha,
            "peer_logits": [z.detach() for z in peer_logits],
            "ensemble_logits": ensemble_logits.detach(),
            "mean_teacher_logits": teacher_logits,
            "labels": labels,
        }

    step.state = state
    return step


def _autocast(dtype):
    """`torch.autocast("cpu", dtype)`, or nothing for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def make_vanilla_step(
    net,
    optimizer,
    padding=4,
    memory_format=torch.contiguous_format,
    generator=None,
    autocast=None,
):
    """Returns `step(images, labels) -> dict`: one plain training step."""

    def step(images, labels):
        with _autocast(autocast):
            logits = net(augment(images, padding, memory_format, generator)).float()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "logits": logits.detach()}

    return step


def build(
    model="pcl",
    depth=32,
    num_classes=10,
    num_peers=3,
    image_size=32,
    memory_format="contiguous",
    lr=0.1,
    weight_decay=5e-4,
    seed=0,
    autocast=None,
    **step_kwargs,
):
    """`(step, modules)` for `model` in `("pcl", "vanilla")`, in train mode.

    `autocast`: None (float32) or `"bfloat16"` (`torch.autocast`).
    `modules` is `{"net": ..., "teachers": ..., "optimizer": ...}`
    (`teachers` is None for vanilla).
    """
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast must be one of {sorted(AUTOCAST_DTYPES, key=str)}. "
            f"Received: autocast={autocast!r}"
        )
    autocast = AUTOCAST_DTYPES[autocast]
    torch.manual_seed(seed)
    fmt = MEMORY_FORMATS[memory_format]
    padding = max(1, image_size // 8)
    generator = torch.Generator().manual_seed(seed + 1)
    if model == "pcl":
        net = PCLNet(depth, num_classes, num_peers).to(memory_format=fmt).train()
        teachers = MeanTeachers(net).train()
        optimizer = make_optimizer(net.parameters(), lr, weight_decay)
        step = make_step(
            net,
            teachers,
            optimizer,
            padding=padding,
            memory_format=fmt,
            generator=generator,
            autocast=autocast,
            **step_kwargs,
        )
    elif model == "vanilla":
        net = PlainNet(depth, num_classes).to(memory_format=fmt).train()
        teachers = None
        optimizer = make_optimizer(net.parameters(), lr, weight_decay)
        step = make_vanilla_step(net, optimizer, padding, fmt, generator, autocast)
    else:
        raise ValueError(f"model must be 'pcl' or 'vanilla'. Received: {model!r}")
    return step, {"net": net, "teachers": teachers, "optimizer": optimizer}


def random_batches(num_images, image_size, num_classes, seed=0):
    """Random uint8 NHWC images and int64 labels, in memory."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(
        0, 256, (num_images, image_size, image_size, 3), dtype=torch.uint8, generator=g
    )
    y = torch.randint(0, num_classes, (num_images,), generator=g)
    return x, y


def time_steps(step, images, labels, batch_size, steps):
    """Seconds of `steps` consecutive training steps on in-memory batches."""
    start = time.perf_counter()
    for i in range(steps):
        batch = slice(i * batch_size, (i + 1) * batch_size)
        step(images[batch], labels[batch])
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["pcl", "vanilla"], default="pcl")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="Steps per timed run.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs (median).")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--num_peers", type=int, default=3)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument(
        "--memory_format", choices=sorted(MEMORY_FORMATS), default="contiguous"
    )
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument(
        "--autocast",
        choices=["none", "bfloat16"],
        default="none",
        help="Forward passes under torch.autocast (mixed precision).",
    )
    parser.add_argument("--threads", type=int, default=0, help="0: torch default.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write the results here.")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    step, _ = build(
        args.model,
        depth=args.depth,
        num_classes=args.num_classes,
        num_peers=args.num_peers,
        image_size=args.image_size,
        memory_format=args.memory_format,
        weight_decay=args.weight_decay,
        seed=args.seed,
        autocast=None if args.autocast == "none" else args.autocast,
    )
    n = max(args.steps, args.warmup_steps) * args.batch_size
    x, y = random_batches(n, args.image_size, args.num_classes, args.seed)
    warmup = time_steps(step, x, y, args.batch_size, args.warmup_steps)
    runs = [
        time_steps(step, x, y, args.batch_size, args.steps) for _ in range(args.repeats)
    ]
    median = statistics.median(runs) / args.steps
    best = min(runs) / args.steps
    out = {
        "implementation": "plain_pytorch",
        "model": args.model,
        "images_per_sec": args.batch_size / median,
        "best_images_per_sec": args.batch_size / best,
        "step_seconds": median,
        "run_seconds": runs,
        "warmup_seconds": warmup,
        **{k: v for k, v in vars(args).items() if k not in ("json", "threads")},
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    print(
        f"[plain PyTorch] {args.model} depth={args.depth} batch={args.batch_size} "
        f"{args.memory_format} threads={out['threads']}: "
        f"{out['images_per_sec']:.1f} img/s median, "
        f"{out['best_images_per_sec']:.1f} best (runs "
        f"{['%.2f' % t for t in runs]} s, warm-up {warmup:.1f} s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return out


if __name__ == "__main__":
    main()
