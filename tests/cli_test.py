"""The `keras-pcl` command line: each subcommand and its error paths."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import cli
from tests.ci_budget import torch_only_in_ci
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A PCL model trained briefly with a best-peer record, saved as .keras."""
    keras.utils.set_random_seed(7)
    x, y = colour_dataset(64, seed=0)
    x_val, y_val = colour_dataset(32, seed=1)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(), num_classes=3, split_at="split", rampup_steps=4
    )
    model.compile(optimizer="sgd")
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[keras_pcl.callbacks.BestPeerTracker(verbose=0)],
    )
    path = str(tmp_path_factory.mktemp("cli") / "pcl.keras")
    model.save(path)
    return path, model, x_val


def test_export_writes_the_best_peer(checkpoint, tmp_path, capsys):
    path, model, x_val = checkpoint
    output = str(tmp_path / "best.keras")
    assert cli.main(["export", path, output, "--format", "keras"]) == cli.EXIT_OK
    assert f"Exported peer {model.best_peer.peer}" in capsys.readouterr().out
    images = x_val[:4].astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.saving.load_model(output)(images)),
        keras.ops.convert_to_numpy(model.get_peer(model.best_peer.peer)(images)),
        atol=1e-5,
    )


def test_export_errors_are_one_line_with_exit_code_1(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    output = str(tmp_path / "peer.keras")

    def error_of(argv):
        code = cli.main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        return code, lines

    code, lines = error_of(["export", str(tmp_path / "missing.keras"), output])
    assert code == cli.EXIT_ERROR and len(lines) == 1
    assert "does not exist" in lines[0] and lines[0].startswith(
        "keras-pcl export: error:"
    )

    code, lines = error_of(["export", path, output, "--peer", "7", "--format", "keras"])
    assert code == cli.EXIT_ERROR and len(lines) == 1 and "peer=7" in lines[0]

    code, lines = error_of(["export", path, output, "--peer", "first"])
    assert code == cli.EXIT_ERROR and "--peer must be" in lines[0]

    assert cli.main(["export", path, output, "--format", "keras"]) == cli.EXIT_OK
    capsys.readouterr()
    code, lines = error_of(["export", path, output, "--format", "keras"])
    assert code == cli.EXIT_ERROR and "overwrite" in lines[0]
    assert cli.main(["export", path, output, "--format", "keras", "--overwrite"]) == 0

    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain_path = str(tmp_path / "plain.keras")
    plain.save(plain_path)
    code, lines = error_of(["export", plain_path, str(tmp_path / "p2.keras")])
    assert code == cli.EXIT_ERROR and "not a PeerCollaborativeModel" in lines[0]

    not_a_model = tmp_path / "junk.keras"
    not_a_model.write_text("not a zip file")
    code, lines = error_of(["export", str(not_a_model), str(tmp_path / "p3.keras")])
    assert code == cli.EXIT_ERROR and "could not load" in lines[0]


def test_bad_usage_exits_with_code_2(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["export", "a.keras", "out", "--format", "pb"])
    assert exit.value.code == cli.EXIT_USAGE
    assert "invalid choice: 'pb'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli.main([])
    assert exit.value.code == cli.EXIT_USAGE


def test_the_version_is_declared_once():
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    version = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "keras_pcl.__version__"}


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("keras-pcl") == "keras_pcl.cli:main"


@torch_only_in_ci  # `keras_pcl.training.train` runs on every backend elsewhere.
def test_train_then_evaluate_the_checkpoint_and_its_export(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--dataset=digits",
            "--image_size=8,8",
            "--backbone=resnet8",
            "--num_peers=2",
            "--epochs=1",
            "--batch_size=16",
            "--steps_per_epoch=1",
            "--validation_split=0.2",
            f"--workdir={workdir}",
            "--save_freq=0",
            "--export_format=keras",
            "--verbose=0",
        ]
    )
    assert code == cli.EXIT_OK, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Best peer: BestPeer(peer=" in out and "Exported best peer" in out

    args = ["--dataset=digits", "--image_size=8,8", "--validation_split=0.2"]
    assert cli.main(["evaluate", str(workdir / "pcl.keras"), *args]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "(359 images)" in out  # 20% of each digit class, rounded half up
    for row in [
        "peer 0 (student)",
        "peer 1 (student)",
        "peer ensemble",
        "peer 1 mean teacher",
        "best peer",
    ]:
        assert row in out, row
    model = keras.saving.load_model(workdir / "pcl.keras")
    best = model.best_peer.peer
    pcl_row = next(
        l
        for l in out.splitlines()
        if f"peer {best} mean teacher" in l and "best" not in l
    )

    assert cli.main(["evaluate", str(workdir / "export.keras"), *args]) == cli.EXIT_OK
    plain_row = capsys.readouterr().out.strip().splitlines()[-1]
    # The exported network is the best peer's mean teacher: same accuracy.
    assert plain_row.split()[-1] == pcl_row.split()[-1]


def test_train_and_evaluate_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["train", "--backbone=resnet9", f"--workdir={tmp_path}/w"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and len(lines) == 1 and "resnet9" in lines[0]

    code = cli.main(
        ["train", f"--dataset={tmp_path}/nowhere", f"--workdir={tmp_path}/w"]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and len(lines) == 1 and "no directory" in lines[0]

    code = cli.main(["evaluate", str(tmp_path / "missing.keras")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and "does not exist" in lines[0]

    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--strategy=horovod"])
    assert exit.value.code == cli.EXIT_USAGE


@torch_only_in_ci  # `fit` timing on every backend is in tests of the library.
def test_benchmark_times_each_method_against_vanilla(capsys):
    code = cli.main(
        [
            "benchmark",
            "--methods=vanilla,cl_ilr",
            "--backbone=resnet8",
            "--image_size=8",
            "--batch_size=4",
            "--steps=1",
            "--repeats=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("vanilla", "cl_ilr")
    }
    assert float(rows["vanilla"][1]) > 0 and rows["vanilla"][3] == "1.00"
    assert float(rows["cl_ilr"][3]) > 0  # Step time relative to vanilla's.


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods=pcl,okdip"], "Unknown method 'okdip'. Did you mean ['okddip']?"),
        (["--backbone=resnet7"], "backbone='resnet7'"),
        (["--steps=0"], "`--steps` must be an int >= 1. Received: --steps=0"),
    ],
)
def test_benchmark_errors_are_one_line(args, message, capsys):
    assert cli.main(["benchmark", *args]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-pcl benchmark: error:")
    assert message in err[0]


def test_export_takes_a_baseline_checkpoint(tmp_path, capsys):
    model = keras_pcl.baselines.DMLModel(tiny_backbone(), num_classes=3, num_peers=2)
    path = str(tmp_path / "dml.keras")
    model.save(path)
    output = str(tmp_path / "peer1.keras")
    argv = ["export", path, output, "--peer", "1", "--format", "keras"]
    assert cli.main(argv) == cli.EXIT_OK
    assert "Exported peer 1 (peer," in capsys.readouterr().out
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.saving.load_model(output)(images)),
        keras.ops.convert_to_numpy(model.get_peer(1)(images)),
        atol=1e-5,
    )


def test_flag_choices_are_the_library_lists(capsys):
    parser = cli.build_parser()
    for format in keras_pcl.export.FORMATS:
        args = parser.parse_args(["export", "a.keras", "out", "--format", format])
        assert args.format == format
    for method in keras_pcl.methods.METHODS:
        assert parser.parse_args(["train", f"--method={method}"]).method == method
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--method=pcl2"])
    assert "invalid choice: 'pcl2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--help"])
    help = " ".join(capsys.readouterr().out.split())
    assert ", ".join(keras_pcl.methods.METHODS) in help


def test_lr_decay_epochs_are_floats_and_image_size_ints(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--lr_decay_epochs=1.5,3", "--image_size=8,8"])
    assert args.lr_decay_epochs == (1.5, 3.0)
    assert all(isinstance(e, float) for e in args.lr_decay_epochs)
    assert args.image_size == (8, 8)
    assert all(isinstance(v, int) for v in args.image_size)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--image_size=8.5,8"])
    assert "comma-separated ints" in capsys.readouterr().err


def test_commands_print_nothing_on_stderr(tmp_path):
    """No TensorFlow or absl start-up lines: a user sees keras-pcl's output."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-pcl")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # The default backend, and the loud one: on JAX and torch, their own
    # libraries set up native logging before TensorFlow is imported.
    env["KERAS_BACKEND"] = "tensorflow"

    def run(*args):
        return subprocess.run(
            [script, *args], capture_output=True, text=True, env=env, timeout=300
        )

    result = run("--help")
    assert result.returncode == 0 and "train" in result.stdout
    assert result.stderr == ""

    model = keras_pcl.baselines.DMLModel(tiny_backbone(), num_classes=3, num_peers=2)
    path = str(tmp_path / "dml.keras")
    model.save(path)
    output = str(tmp_path / "peer.keras")
    result = run("export", path, output, "--peer=1", "--format=keras")
    assert result.returncode == 0, result.stderr
    assert "Exported peer 1" in result.stdout
    assert result.stderr == ""
