"""Every built-in backbone inside `PeerCollaborativeModel`.

Parameter counts and architectures use the full-size networks (no training).
One PCL training step and the export of a peer use each backbone's own class
at a size that keeps the suite within its CI time on 2 CPU cores: the fixed
architectures (VGG-16, ResNet-18) at 32x32 inputs, on torch in CI (see
tests/ci_budget.py); the deep, configurable ones at their smallest depth,
which builds the same block types, the same split and the same export path
(ResNet-110 -> depth 11, WRN-20-8 -> WRN-11-2, DenseNet-40-12 -> DenseNet-10-4;
ResNet-20/32/56 -> ResNet-8). On JAX one XLA compilation of a PCL step of the
full ResNet-110 or DenseNet-40 takes over a minute on 2 cores.
"""

import os

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import backbones
from tests.backbones import cifar_bottleneck_resnet_test
from tests.backbones import cifar_resnet_test
from tests.backbones import densenet_test
from tests.backbones import imagenet_resnet_test
from tests.backbones import vgg_test

NUM_CLASSES = 10


def expected_deployed_parameters(name):
    """Backbone (computed layer by layer in its test module) + classifier."""
    k = NUM_CLASSES
    if name in ("resnet20", "resnet32", "resnet56"):
        return cifar_resnet_test.expected_parameters(int(name[6:]), num_classes=k)
    if name == "resnet110":
        return cifar_bottleneck_resnet_test.expected_parameters(110, num_classes=k)
    if name == "wrn20_8":
        return cifar_bottleneck_resnet_test.expected_parameters(
            20, width_factor=8, num_classes=k
        )
    if name == "vgg16":
        return vgg_test.expected_parameters(num_classes=k)
    if name == "densenet40_12":
        return densenet_test.expected_parameters(num_classes=k)[0]
    if name == "resnet18":
        # torchvision's 11,689,512 with a 1000-way classifier, BN moving
        # statistics added, the 1000-way classifier swapped for a k-way one.
        published = imagenet_resnet_test.PUBLISHED[18]
        moving = 2 * imagenet_resnet_test.BN_CHANNELS[18]
        return published + moving - (512 * 1000 + 1000) + (512 * k + k)
    raise AssertionError(name)


def leaf_layers(model):
    """(class, output shape, weight shapes) of every non-input layer, with
    nested models flattened, in order."""
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            leaves.extend(leaf_layers(layer))
            continue
        leaves.append(
            (
                layer.__class__.__name__,
                tuple(layer.output.shape),
                [tuple(w.shape) for w in layer.weights],
            )
        )
    return leaves


def test_names_cover_the_paper_tables():
    assert backbones.names() == [
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet110",
        "wrn20_8",
        "vgg16",
        "densenet40_12",
        "resnet18",
    ]
    assert list(backbones.BACKBONES) == backbones.names()


@pytest.mark.parametrize(
    "name",
    [
        name
        if name in ("resnet20", "resnet32", "resnet56")
        else pytest.param(name, marks=pytest.mark.slow_on_jax)
        for name in backbones.names()
    ],
)
def test_deployed_network_is_the_backbone_plus_a_classifier(name):
    backbone = backbones.get(name)
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=NUM_CLASSES, num_peers=2
    )
    peer = model.get_peer(0)
    assert peer.count_params() == expected_deployed_parameters(name)
    # Same layers, shapes and weights, in order, as Rescaling -> the plain
    # backbone -> Dense(num_classes).
    plain = keras.Sequential(
        [
            keras.Input(backbone.input.shape[1:]),
            keras.layers.Rescaling(1 / 255),
            backbone,
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    assert leaf_layers(peer) == leaf_layers(plain)


# name -> (backbone for the training test, expected split layer)
SMALL = {
    "resnet20": lambda: backbones.CIFARResNet(depth=8, input_shape=(8, 8, 3)),
    "resnet110": lambda: backbones.CIFARBottleneckResNet(
        depth=11, input_shape=(8, 8, 3)
    ),
    "wrn20_8": lambda: backbones.WideResNet(
        depth=11, width_factor=2, input_shape=(8, 8, 3)
    ),
    "vgg16": lambda: backbones.get("vgg16"),
    "densenet40_12": lambda: backbones.CIFARDenseNet(
        depth=10, growth_rate=4, input_shape=(8, 8, 3)
    ),
    "resnet18": lambda: backbones.get("resnet18", input_shape=(32, 32, 3)),
}


# Run on torch only in CI (tests/ci_budget.py): VGG-16 and
# ResNet-18 can't be made smaller, and their step takes 0.5-1 min to compile
# on JAX or trace on TensorFlow; WRN is the bottleneck class of the resnet110
# case with a width factor; the basic-block CIFAR ResNet trains on every
# backend throughout tests/model_test.py and tests/training_test.py.
TORCH_ONLY = ("vgg16", "resnet18", "wrn20_8", "resnet20", "resnet110", "densenet40_12")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.backend_independent)
        if name in TORCH_ONLY
        else name
        for name in sorted(SMALL)
    ],
)
def test_one_pcl_step_then_export_and_reload_a_peer(name, tmp_path):
    keras.utils.set_random_seed(0)
    backbone = SMALL[name]()
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=3, num_peers=2, rampup_steps=1
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    shape = (2,) + tuple(backbone.input.shape[1:])
    x = np.random.default_rng(0).integers(0, 256, shape).astype("uint8")
    y = np.array([0, 2], dtype="int32")
    before = [w.copy() for w in model.trunk.get_weights()]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == 1
    after = model.trunk.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))

    peer = model.get_peer(0)
    path = os.path.join(tmp_path, f"{name}_peer.keras")
    peer.save(path)
    reloaded = keras.models.load_model(path)
    # The reloaded peer predicts what the PCL model predicts: the deployed
    # peer's mean teacher.
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )


def _first_kernel(model):
    return next(w for w in model.trainable_weights if len(w.shape) == 4)


def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


def test_peers_and_mean_teachers_do_not_share_weights():
    model = keras_pcl.PeerCollaborativeModel(
        SMALL["densenet40_12"](), num_classes=3, num_peers=3
    )
    parts = {
        "trunk": model.trunk,
        "mean_teacher_trunk": model.mean_teacher_trunk,
        **{f"peer_{j}": h for j, h in enumerate(model.peer_heads)},
        **{f"mean_teacher_{j}": h for j, h in enumerate(model.mean_teacher_heads)},
    }
    ids = {name: {id(v) for v in part.weights} for name, part in parts.items()}
    names = sorted(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not ids[a] & ids[b], (a, b)
    # Fresh initialisation: the peers start from different weights.
    assert not np.allclose(
        _numpy(_first_kernel(model.peer_heads[0])),
        _numpy(_first_kernel(model.peer_heads[1])),
    )
    # Writing one variable leaves every other part as it was.
    for written in ("peer_0", "trunk"):
        snapshot = {n: [_numpy(v) for v in p.weights] for n, p in parts.items()}
        variable = _first_kernel(parts[written])
        variable.assign(_numpy(variable) + 1.0)
        for name, part in parts.items():
            for old, new in zip(snapshot[name], part.weights):
                if name == written and new is variable:
                    np.testing.assert_allclose(_numpy(new), old + 1.0)
                else:
                    np.testing.assert_array_equal(_numpy(new), old)


def test_kernel_regularizer_counts_once_per_student_not_for_mean_teachers():
    l2 = 0.5
    backbone = backbones.CIFARResNet(
        depth=8, input_shape=(8, 8, 3), kernel_regularizer=keras.regularizers.L2(l2)
    )
    model = keras_pcl.PeerCollaborativeModel(backbone, num_classes=3, num_peers=3)
    # Independent sum: l2 * |w|^2 over the convolution kernels of the
    # student trunk (once) and of every student peer; none for the mean
    # teachers, whose weights are not trained.
    expected = 0.0
    for part in [model.trunk, *model.peer_heads]:
        for layer in part.layers:
            if isinstance(layer, keras.layers.Conv2D):
                expected += l2 * np.sum(_numpy(layer.kernel).astype("float64") ** 2)
    total = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    # Making the mean teachers' kernels large does not change it.
    for part in [model.mean_teacher_trunk, *model.mean_teacher_heads]:
        for layer in part.layers:
            if isinstance(layer, keras.layers.Conv2D):
                layer.kernel.assign(_numpy(layer.kernel) + 10.0)
    total = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
