"""`keras_pcl.training`: the example scripts' job, resuming after SIGKILL."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_pcl import training
from keras_pcl.training import resume
from tests.examples.quickstart_test import write_image_folder

SCRIPT = os.path.join(os.path.dirname(__file__), "resumable_run.py")


def run(*args):
    return subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def final_weights(workdir):
    model = keras.saving.load_model(os.path.join(workdir, "pcl.keras"))
    return {w.path: np.array(v) for w, v in zip(model.weights, model.get_weights())}


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=12, size=8)
    uninterrupted = run(data, tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    workdir = tmp_path / "preempted"
    killed = run(data, workdir, 7)  # epoch 2 of 2, its third batch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "pcl.keras").exists()
    resumed = run(data, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    initial, final = [int(v) for v in resumed.stdout.split()[1::2]]
    assert 0 < initial < 7 and initial % 5 != 0, resumed.stdout  # mid-epoch backup
    assert final == 10  # 2 epochs of 5 steps: nothing lost, nothing twice

    expected = final_weights(tmp_path / "uninterrupted")
    actual = final_weights(workdir)
    assert expected.keys() == actual.keys()
    assert any("mean_teacher" in k for k in expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-6, err_msg=key)


def test_a_workdir_of_another_configuration_is_refused(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=8, size=8)
    workdir = tmp_path / "run"
    previous = training.TrainConfig(dataset=data, workdir=str(workdir), lr=0.1)
    # What a run leaves in its workdir (see `train`'s docstring).
    (workdir / "backup").mkdir(parents=True)
    with open(workdir / "config.json", "w") as f:
        json.dump(resume._jsonable(dataclasses.asdict(previous)), f)
    changed = training.TrainConfig(dataset=data, workdir=str(workdir), lr=0.5)
    with pytest.raises(ValueError, match=r"another configuration \(lr: 0.1 -> 0.5\)"):
        training.train(changed)
    # Fields that may change on a resume (e.g. more epochs) are accepted
    # up to the data: this one fails later, on the missing dataset.
    more_epochs = training.TrainConfig(
        dataset=str(tmp_path / "nowhere"), workdir=str(workdir), lr=0.1, epochs=400
    )
    more_epochs_json = resume._jsonable(dataclasses.asdict(more_epochs))
    with open(workdir / "config.json", "w") as f:
        json.dump({**more_epochs_json, "epochs": 300}, f)
    with pytest.raises(ValueError, match="no directory"):
        training.train(more_epochs)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategy", "horovod", "`strategy` must be one of"),
        ("mixed_precision", "fp8", "`mixed_precision` must be one of"),
        ("backbone", "resnet9", "`backbone` must be one of"),
        ("export_format", "pb", "`export_format` must be one of"),
        ("num_peers", 1, "`num_peers` must be an int >= 2"),
    ],
)
def test_bad_configuration_raises_a_clear_error(field, value, message):
    config = training.TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_dataset_that_is_neither_known_nor_a_folder_raises(tmp_path):
    config = training.TrainConfig(
        dataset=str(tmp_path / "nowhere"), workdir=str(tmp_path / "w")
    )
    with pytest.raises(ValueError, match="no directory"):
        training.train(config)


def test_strategies_this_machine_lacks_raise_clear_errors():
    with pytest.raises(ValueError, match="strategy='gpu'"):
        training.make_distribution("gpu")
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="not available on the torch backend"):
            training.make_distribution("mirrored")
    else:
        with pytest.raises(ValueError, match="strategy='tpu'"):
            training.make_distribution("tpu")
    assert training.make_distribution("cpu").num_replicas == 1


def test_global_batch_must_split_evenly_over_replicas(tmp_path, monkeypatch):
    two = training.Distribution("mirrored", 2)
    monkeypatch.setattr(training.job, "make_distribution", lambda name: two)
    config = training.TrainConfig(
        dataset=str(tmp_path), batch_size=5, workdir=str(tmp_path / "w")
    )
    with pytest.raises(ValueError, match="divisible by the 2 replicas.*batch_size=5"):
        training.train(config)


def test_float16_on_cpu_warns_and_still_sets_the_policy():
    try:
        with pytest.warns(UserWarning, match="float16.*CPU"):
            training.set_mixed_precision("float16", training.Distribution("cpu", 1))
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "flags, warns",
    [("fpu sse avx2 fma", True), ("fpu avx512f avx512_bf16", False)],
    ids=["no_bf16_instructions", "avx512_bf16"],
)
def test_bfloat16_on_cpu_warns_without_bfloat16_instructions(
    tmp_path, monkeypatch, flags, warns
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    from keras_pcl.training import distribution

    default = distribution.cpu_has_bfloat16
    monkeypatch.setattr(distribution, "cpu_has_bfloat16", lambda: default(str(cpuinfo)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            training.set_mixed_precision("bfloat16", training.Distribution("cpu", 1))
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    messages = [str(w.message) for w in caught if "bfloat16" in str(w.message)]
    if warns:
        assert len(messages) == 1, messages
        assert "mixed_precision='bfloat16' on CPU" in messages[0]
    else:
        assert messages == []


def test_cpu_has_bfloat16_reads_x86_and_arm_flags(tmp_path):
    from keras_pcl.training.distribution import cpu_has_bfloat16

    cases = {
        "flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n": True,
        "flags\t\t: fpu amx_tile amx_bf16\n": True,
        "Features\t: fp asimd bf16 i8mm\n": True,
        "flags\t\t: fpu avx2 avx512f avx512_vnni\n": False,
        "model name\t: bf16 in a name is not a flag\n": False,
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text(text)
        assert cpu_has_bfloat16(str(path)) is expected, text
    assert cpu_has_bfloat16(str(tmp_path / "missing")) is False


def test_lr_decay_epochs_are_floats_and_image_size_ints_in_the_absl_flags():
    from absl import flags

    flag_values = flags.FlagValues()
    training.define_flags(flag_values=flag_values)
    flag_values(["prog", "--lr_decay_epochs=1.5,3", "--image_size=8,8"])
    config = training.config_from_flags(flag_values)
    assert config.lr_decay_epochs == (1.5, 3.0)
    assert all(isinstance(e, float) for e in config.lr_decay_epochs)
    assert config.image_size == (8, 8)
    assert all(isinstance(v, int) for v in config.image_size)


def test_field_help_and_docstring_come_from_the_fields():
    fields = dataclasses.fields(training.TrainConfig)
    assert list(training.FIELD_HELP) == [f.name for f in fields]
    for field in fields:
        assert f"    {field.name}: " in training.TrainConfig.__doc__, field.name
    assert training.TrainConfig().method == "pcl"


def _process_state():
    state = {
        "policy": keras.mixed_precision.global_policy().name,
        "distribution": keras.distribution.distribution(),
    }
    if keras.backend.backend() == "tensorflow":
        from tensorflow.python.framework import config

        state["determinism"] = config.is_op_determinism_enabled()
    return state


def test_global_state_restored_puts_back_policy_distribution_determinism():
    before = _process_state()
    assert before["policy"] == "float32"
    with training.global_state_restored():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.distribution.set_distribution("a distribution")
        training.distribution.enable_op_determinism()
        assert _process_state() != before
    assert _process_state() == before


def test_train_restores_the_process_state_when_it_raises(tmp_path, monkeypatch):
    from keras_pcl.training import distribution

    # A CPU without bfloat16 instructions: `train` also warns on the way.
    monkeypatch.setattr(distribution, "cpu_has_bfloat16", lambda: False)
    before = _process_state()
    config = training.TrainConfig(
        dataset=str(tmp_path / "nowhere"),  # Fails after the state is set.
        workdir=str(tmp_path / "w"),
        mixed_precision="bfloat16",
        deterministic=True,
    )
    with pytest.warns(UserWarning, match="bfloat16"):
        with pytest.raises(ValueError, match="no directory"):
            training.train(config)
    assert _process_state() == before


# `train` runs on every backend in the SIGKILL resume test.


@pytest.mark.backend_independent
def test_a_baseline_without_validation_exports_its_deploy_peer_and_says_so(
    tmp_path, capsys
):
    config = training.TrainConfig(
        method="dml",
        dataset="digits",
        image_size=(8, 8),
        backbone="resnet8",
        num_peers=2,
        epochs=1,
        batch_size=16,
        steps_per_epoch=1,
        validation_split=0,
        workdir=str(tmp_path / "run"),
        save_freq=0,
        export_format="keras",
        verbose=1,
    )
    before = _process_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = training.train(config)
    assert not [w for w in caught if "shuffle" in str(w.message)]
    assert _process_state() == before
    model = result["model"]
    assert type(model).__name__ == "DMLModel"
    assert result["best_peer"] is None
    assert result["exported_peer"] == model.deploy_peer == 0
    assert "no best peer was recorded" in result["exported_peer_reason"]
    assert "no best peer was recorded" in capsys.readouterr().out
    # The final model is named after the method, not `pcl.keras`.
    assert result["paths"]["model"] == str(tmp_path / "run" / "dml.keras")
    assert os.path.exists(result["paths"]["model"])
    exported = keras.saving.load_model(result["paths"]["export"])
    shape = (2, 8, 8, 1)  # Digits: one channel.
    images = np.random.default_rng(0).uniform(0, 16, shape).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(exported(images)),
        keras.ops.convert_to_numpy(model.get_peer(0)(images)),
        atol=1e-5,
    )


# ---------------------------------------------------------------------------
# `train_images`: a class-balanced subset of the training split.
# ---------------------------------------------------------------------------


def examples(dataset):
    """`(images, labels)` of an unbatched dataset, as two numpy arrays."""
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.array(labels)


def digits_config(**overrides):
    values = dict(dataset="digits", image_size=(8, 8), validation_split=0.2)
    values.update(overrides)
    return training.TrainConfig(**values)


def test_train_images_draws_a_class_balanced_subset_of_the_digits():
    full = training.load_data(digits_config())
    subset = training.load_data(digits_config(train_images=25))
    assert (full.num_train, full.num_validation) == (1438, 359)
    assert (subset.num_train, subset.num_validation) == (25, 359)
    images, labels = examples(subset.train)
    assert len(labels) == 25
    # 25 = 10 * 2 + 5: the first five classes get one more.
    assert np.bincount(labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    # Images of the training split, with their labels, none twice.
    full_images, full_labels = examples(full.train)
    rows = {(im.tobytes(), int(y)) for im, y in zip(full_images, full_labels)}
    drawn = {(im.tobytes(), int(y)) for im, y in zip(images, labels)}
    assert drawn <= rows and len(drawn) == 25
    # The validation split is exactly the one without a subset.
    for a, b in zip(examples(full.validation), examples(subset.validation)):
        np.testing.assert_array_equal(a, b)


def test_the_subset_is_seeded_and_nested():
    def drawn(**overrides):
        images, labels = examples(training.load_data(digits_config(**overrides)).train)
        return {(im.tobytes(), int(y)) for im, y in zip(images, labels)}

    twenty = drawn(train_images=20)
    assert drawn(train_images=20) == twenty
    assert twenty < drawn(train_images=50)  # 2 of each class among 5 of each
    other_seed = training.load_data(digits_config(train_images=20, seed=1))
    assert other_seed.num_train == 20
    assert drawn(train_images=20, seed=1) != twenty


def test_train_images_subsets_an_image_folder_and_sets_the_steps(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, classes=3, per_class=8, size=8)
    config = training.TrainConfig(
        dataset=data, validation_split=0.25, batch_size=2, train_images=7
    )
    full = training.load_data(dataclasses.replace(config, train_images=0))
    subset = training.load_data(config)
    assert (full.num_train, subset.num_train) == (18, 7)
    assert np.bincount(examples(subset.train)[1]).tolist() == [3, 2, 2]
    for a, b in zip(examples(full.validation), examples(subset.validation)):
        np.testing.assert_array_equal(a, b)
    assert training.job.prepare_data(config).steps_per_epoch == 3  # 7 // 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(train_images=-1), r"`train_images` must be an int >= 0"),
        (dict(train_images=2.5), r"`train_images` must be an int >= 0"),
        (
            dict(dataset="imagenet2012", train_images=1000),
            r"`train_images` must be 0 for dataset='imagenet2012'",
        ),
    ],
)
def test_bad_train_images_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**overrides).validate()
    with pytest.raises(ValueError, match=message):
        training.load_data(training.TrainConfig(**overrides))


@pytest.mark.parametrize(
    "train_images, message",
    [
        (9, r"`train_images` must be an int >= 10\. Received: train_images=9"),
        (1430, r"asks 143 of class '0', which has 142 .*train_images=1430"),
    ],
)
def test_train_images_the_digits_cannot_serve_raise(train_images, message):
    with pytest.raises(ValueError, match=message):
        training.load_data(digits_config(train_images=train_images))


def test_train_images_is_a_flag_of_the_scripts():
    from absl import flags

    flag_values = flags.FlagValues()
    training.define_flags(flag_values=flag_values)
    flag_values(["prog", "--train_images=500"])
    assert training.config_from_flags(flag_values).train_images == 500
    assert training.TrainConfig().train_images == 0


# ---------------------------------------------------------------------------
# keras.applications backbones and fine-tuning (examples/finetune.py).
# ---------------------------------------------------------------------------


def small_mobilenet_config(tmp_path, **overrides):
    values = dict(
        backbone="MobileNetV2",
        backbone_alpha=0.35,
        weight_decay=1e-4,
        workdir=str(tmp_path / "w"),
    )
    values.update(overrides)
    return training.TrainConfig(**values)


@pytest.mark.slow_on_jax  # Building MobileNetV2 compiles a program per weight shape.
def test_an_application_backbone_gets_weight_decay_and_checked_weights(tmp_path):
    config = small_mobilenet_config(tmp_path)
    backbone = training.build_backbone(config, (32, 32, 3))
    kernels = [
        w
        for w in backbone.trainable_weights
        if w.name in ("kernel", "depthwise_kernel")
    ]
    assert len(backbone.losses) == len(kernels) > 50
    # The peers are clones of the layers' configs: they are regularized too.
    conv = backbone.get_layer("block_13_expand")
    assert type(conv).from_config(conv.get_config()).kernel_regularizer is not None

    other = str(tmp_path / "alpha_0.5.weights.h5")
    keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    ).save_weights(other)
    with pytest.raises(ValueError) as error:
        training.build_backbone(
            small_mobilenet_config(tmp_path, backbone_weights=other), (32, 32, 3)
        )
    message = str(error.value)
    assert "`backbone_weights` does not match backbone='MobileNetV2'" in message
    assert "could not be loaded" in message  # Keras' own first line.
    assert "\n" not in message and message.endswith(f"backbone_weights={other!r}")
    missing = small_mobilenet_config(tmp_path, backbone_weights="nowhere.weights.h5")
    with pytest.raises(FileNotFoundError, match="no such file exists"):
        training.build_backbone(missing, (32, 32, 3))


@pytest.mark.slow_on_jax
def test_imagenet_weights_are_keras_own_download(tmp_path, monkeypatch):
    calls = []
    real = keras.applications.MobileNetV2

    @functools.wraps(real)  # Its signature: `alpha` is accepted.
    def spy(**kwargs):
        calls.append(kwargs)
        return real(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "MobileNetV2", spy)
    config = small_mobilenet_config(tmp_path, backbone_weights="imagenet")
    config.validate()
    training.build_backbone(config, (32, 32, 3))
    assert calls == [
        dict(
            include_top=False,
            weights="imagenet",
            pooling="avg",
            input_shape=(32, 32, 3),
            alpha=0.35,
        )
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(backbone="MobileNetv2"), r"Did you mean \['MobileNetV2', "),
        (dict(backbone="ResNet50", backbone_alpha=0.5), "has no `alpha`"),
        (dict(backbone="MobileNetV2", backbone_alpha=0), "a positive number"),
        (dict(backbone_weights="imagenet"), "for keras.applications backbones"),
        (dict(peer_initialization="pretrained"), "`peer_initialization` must be"),
        (dict(peer_perturbation=0.1), "0 unless peer_initialization='backbone'"),
    ],
)
def test_bad_finetuning_options_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**overrides).validate()


def test_backbones_with_their_own_preprocessing_get_none(tmp_path):
    from keras_pcl.backbones import applications

    for name in ("EfficientNetB0", "ConvNeXtTiny", "MobileNetV3Small"):
        assert applications.application_preprocessing(name) is None, name
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    own = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    config = training.TrainConfig(backbone="resnet8")
    assert training.model_preprocessing(config, own, splits=None) is None


def test_a_workdir_written_before_new_fields_existed_still_resumes(tmp_path):
    config = training.TrainConfig(workdir=str(tmp_path))
    (tmp_path / "backup").mkdir()
    old = resume._jsonable(dataclasses.asdict(config))
    for key in ("method", "peer_initialization", "backbone_weights", "split_at"):
        del old[key]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    resume.check_workdir_config(config)  # No "another configuration" error.


# ---------------------------------------------------------------------------
# Several processes: the cluster description and the engines that refuse it
# (the two-process runs themselves are in tests/multi_process_test.py).
# ---------------------------------------------------------------------------

CLUSTER_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
    "TF_CONFIG",
)


@pytest.fixture
def no_cluster_variables(monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_processes=2), r"`num_processes=2` needs `coordinator_address`"),
        (
            dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=2),
            r"`process_id` must be in \[0, num_processes\) = \[0, 2\)",
        ),
        (
            dict(coordinator_address="10.0.0.1:1234", num_processes=2),
            r"`process_id` is missing",
        ),
        (dict(coordinator_address="10.0.0.1:1234"), r"but `num_processes` is 1"),
        (
            dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0),
            r"`coordinator_address` must be HOST:PORT",
        ),
        (dict(num_processes=0), r"`num_processes` must be an int >= 1"),
        (dict(process_id=1), r"a single process is process 0"),
    ],
)
def test_a_partial_or_inconsistent_cluster_is_refused(
    fields, message, no_cluster_variables
):
    with pytest.raises(ValueError, match=message) as error:
        training.TrainConfig(**fields).validate()
    assert "Received: " in str(error.value)


def test_the_cluster_comes_from_the_fields_then_keras_variables(no_cluster_variables):
    from keras_pcl.training import cluster

    assert not cluster.cluster_from_config(training.TrainConfig()).multi_process
    no_cluster_variables.setenv(
        "KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:2345"
    )
    no_cluster_variables.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert cluster.cluster_from_config(training.TrainConfig()) == cluster.Cluster(
        "10.0.0.1:1234", 2, 1
    )
    # A field overrides its variable.
    config = training.TrainConfig(process_id=0)
    assert cluster.cluster_from_config(config).process_id == 0
    no_cluster_variables.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="`KERAS_DISTRIBUTION_PROCESS_ID` must be"):
        training.TrainConfig().validate()
    # `auto`: JAX finds the processes (TPU pod slice, SLURM, Open MPI).
    auto = cluster.cluster_from_config(
        training.TrainConfig(coordinator_address="auto", process_id=0)
    )
    assert auto.multi_process and auto.num_processes is None


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="JAX would join the cluster"
)
def test_several_processes_are_refused_off_jax_naming_why(
    tmp_path, no_cluster_variables
):
    config = training.TrainConfig(
        dataset=str(tmp_path),
        workdir=str(tmp_path / "w"),
        coordinator_address="127.0.0.1:1234",
        num_processes=2,
        process_id=0,
    )
    expected = {
        "tensorflow": r"MultiWorkerMirroredStrategy .*keras-team/keras/issues/20585",
        "torch": r"no distribution backend for torch",
    }[keras.backend.backend()]
    with pytest.raises(ValueError, match=expected) as error:
        training.train(config)
    assert "KERAS_BACKEND=jax" in str(error.value)
    assert str(error.value).endswith("process_id=0")
    assert not (tmp_path / "w").exists()  # Refused before anything is written.


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TF_CONFIG is TensorFlow's"
)
def test_tf_config_with_several_workers_is_refused(no_cluster_variables):
    cluster = {"worker": ["127.0.0.1:1234", "127.0.0.1:1235"]}
    no_cluster_variables.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker"}})
    )
    with pytest.raises(
        ValueError, match="issues/20585.*Received: TF_CONFIG with 2 workers"
    ):
        training.make_distribution("auto")


def test_global_batch_must_split_evenly_over_every_process_device(
    tmp_path, monkeypatch
):
    four = training.Distribution("auto", 4, num_processes=2)
    monkeypatch.setattr(training.job, "make_distribution", lambda name: four)
    config = training.TrainConfig(
        dataset=str(tmp_path), batch_size=6, workdir=str(tmp_path / "w")
    )
    with pytest.raises(
        ValueError, match=r"divisible by the 4 replicas .* on 2 processes.*=6$"
    ):
        training.train(config)


@pytest.mark.backend_independent  # The optimizer's configuration only.
@pytest.mark.parametrize(
    "overrides", [dict(lr_decay_fractions=()), dict(lr_decay_epochs=())]
)
def test_no_learning_rate_drop_keeps_the_rate_constant(overrides):
    config = training.TrainConfig(backbone="resnet8", epochs=4, lr=0.05, **overrides)
    config.validate()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    training.compile_model(model, config, steps_per_epoch=10)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == (
        pytest.approx(0.05)
    )
    model.optimizer.iterations.assign(39)  # The last step of the run.
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == (
        pytest.approx(0.05)
    )
