"""The plain-PyTorch PCL step of `benchmarks/torch_pcl_reference.py` is PCL.

It is what `benchmarks/vs_pytorch.py` compares keras-pcl with, so it must do
the same work: the loss of `keras_pcl.losses.pcl_loss` (value and which
logits get gradient), the EMA of spec section 4 updated before the
mean-teacher forward pass, the mean teachers run in train mode on each
peer's own view, pad + crop + flip per image, and the same number of
trainable parameters as keras-pcl's model. Torch backend only; tiny
networks (ResNet-8, batch 4, 8x8 images).
"""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the reference is plain PyTorch", allow_module_level=True)

import torch  # noqa: E402

import keras_pcl  # noqa: E402
from keras_pcl.losses import pcl_loss  # noqa: E402

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "torch_pcl_reference.py"
_spec = importlib.util.spec_from_file_location("torch_pcl_reference", PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

SIZE = 8
BATCH = 4


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny networks: one thread is fastest, and much faster on a loaded
    # machine (two threads wait for each other at every op).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(seed=0):
    return ref.random_batches(BATCH, SIZE, 10, seed)


def _numpy(tensors):
    return [t.detach().numpy() for t in tensors]


def test_loss_and_its_gradients_match_keras_pcl():
    step, _ = ref.build("pcl", depth=8, image_size=SIZE, rampup_steps=4)
    x, y = _batch()
    step(x, y)  # Step 1 has w(1) = exp(-5 * 0.75^2), teachers != students.
    out = step(x, y)
    assert out["consistency_weight"] == pytest.approx(np.exp(-5 * 0.75**2))
    expected = pcl_loss(
        y.numpy(),
        _numpy(out["peer_logits"]),
        out["ensemble_logits"].numpy(),
        _numpy(out["mean_teacher_logits"]),
        temperature=3.0,
        consistency_weight=out["consistency_weight"],
    )
    for name in ("loss", "ce", "pe", "pm"):
        np.testing.assert_allclose(
            float(out[name]), float(expected[name]), rtol=1e-5, err_msg=name
        )

    # Same gradients w.r.t. every logit: the teachers are detached alike.
    def leaves():
        return (
            [z.clone().requires_grad_() for z in out["peer_logits"]],
            out["ensemble_logits"].clone().requires_grad_(),
            [z.clone().requires_grad_() for z in out["mean_teacher_logits"]],
        )

    grads = []
    for objective in ("reference", "keras_pcl"):
        peers, ensemble, teachers = leaves()
        if objective == "reference":
            loss = ref.pcl_objective(y, peers, ensemble, teachers, 3.0, 0.7)[0]
        else:
            loss = pcl_loss(y, peers, ensemble, teachers, 3.0, 0.7)["loss"]
        loss.backward()
        grads.append(
            [p.grad.numpy() for p in peers + [ensemble]]
            + [t.grad for t in teachers]  # No gradient reaches a teacher.
        )
    m = len(out["peer_logits"])
    for got, want in zip(grads[0][: m + 1], grads[1][: m + 1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert all(g is None for g in grads[0][m + 1 :] + grads[1][m + 1 :])


def test_mean_teachers_follow_alpha_k_before_their_forward_pass():
    step, modules = ref.build("pcl", depth=8, image_size=SIZE)
    net, teachers = modules["net"], modules["teachers"]
    students = ref.MeanTeachers.student_parameters(net)
    x, y = _batch()
    before = [p.detach().clone() for p in students]
    out = step(x, y)
    # alpha_0 = 0: theta'_0 = theta_0, so each mean teacher computes what
    # its student computed on the same view in train mode (batch statistics).
    assert out["alpha"] == 0.0
    for t, s in zip(teachers.parameters(), before):
        np.testing.assert_array_equal(t.numpy(), s.numpy())
    for z_teacher, z_peer in zip(out["mean_teacher_logits"], out["peer_logits"]):
        np.testing.assert_allclose(z_teacher.numpy(), z_peer.numpy(), atol=1e-5)
    for k in (1, 2):
        teacher_before = [t.detach().clone() for t in teachers.parameters()]
        student_before = [p.detach().clone() for p in students]
        out = step(x, y)
        alpha = 1.0 - 1.0 / (k + 1)
        assert out["alpha"] == pytest.approx(alpha)
        for t, t0, s0 in zip(teachers.parameters(), teacher_before, student_before):
            np.testing.assert_allclose(
                t.numpy(), alpha * t0.numpy() + (1 - alpha) * s0.numpy(), atol=1e-6
            )
    assert not any(p.requires_grad for p in teachers.parameters())
    assert ref.ema_decay_at(10**6, 0.999) == 0.999


def test_augmentation_is_a_padded_crop_and_flip_per_image():
    x, _ = ref.random_batches(16, SIZE, 10, seed=1)
    out = ref.augment(x, padding=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, SIZE, SIZE) and out.dtype == torch.float32
    padded = np.pad(x.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
    got = np.round(out.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    draws = set()
    for i in range(16):
        matches = [
            (dy, dx, flip)
            for dy in range(3)
            for dx in range(3)
            for flip in (False, True)
            if np.array_equal(
                got[i],
                (lambda c: c[:, ::-1] if flip else c)(
                    padded[i, dy : dy + SIZE, dx : dx + SIZE]
                ),
            )
        ]
        assert matches, i
        draws.add(matches[0])
    assert len(draws) > 3  # Drawn per image, not once per batch.


def test_same_trainable_parameters_as_keras_pcl_and_vanilla_runs():
    backbone = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(SIZE, SIZE, 3))
    model = keras_pcl.PeerCollaborativeModel(backbone, num_classes=10)
    keras_count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    net = ref.PCLNet(depth=8, num_classes=10, num_peers=3)
    assert sum(p.numel() for p in net.parameters()) == keras_count
    plain = (
        keras_count
        - 2
        * (  # keras' backbone + Dense(10), one peer.
            sum(int(np.prod(w.shape)) for w in model.peer_heads[0].trainable_weights)
            + 64 * 10
            + 10
        )
        - (64 * 3 * 10 + 10)
    )
    step, modules = ref.build("vanilla", depth=8, image_size=SIZE)
    assert sum(p.numel() for p in modules["net"].parameters()) == plain
    x, y = _batch()
    assert np.isfinite(float(step(x, y)["loss"]))


def test_autocast_runs_the_convolutions_in_bfloat16_and_the_loss_in_float32():
    """`--autocast=bfloat16`: what a PyTorch user sets against mixed_bfloat16."""
    seen = []
    step, modules = ref.build("pcl", depth=8, image_size=SIZE, autocast="bfloat16")
    handles = [
        module.register_forward_hook(lambda mod, i, out: seen.append(out.dtype))
        for module in modules["net"].modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    x, y = _batch()
    out = step(x, y)
    for handle in handles:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    for logits in out["peer_logits"] + out["mean_teacher_logits"]:
        assert logits.dtype == torch.float32
    # Weights stay float32 (autocast casts per op).
    assert {p.dtype for p in modules["net"].parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="autocast must be one of"):
        ref.build("pcl", depth=8, image_size=SIZE, autocast="float16")
