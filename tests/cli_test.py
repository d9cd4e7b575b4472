"""The `keras-pcl` command line: each subcommand and its error paths."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pcl
from keras_pcl import cli
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


@pytest.mark.backend_independent  # Argument parsing: backend-independent.
def test_flags_are_not_abbreviated(capsys):
    parser = cli.build_parser()
    for argv in (["train", "--epoch=3"], ["train", "--lr_decay=1"]):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args(argv)
        assert exit.value.code == cli.EXIT_USAGE
        assert "unrecognized arguments" in capsys.readouterr().err
    assert parser.parse_args(["train", "--epochs=3"]).epochs == 3


# Refused before the checkpoint is read: backend-independent.


@pytest.mark.backend_independent
def test_export_refuses_a_format_that_the_extension_contradicts(tmp_path, capsys):
    output = str(tmp_path / "model.onnx")
    code = cli.main(["export", "missing.keras", output, "--format=tf_saved_model"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR
    assert "extension of format 'onnx', but format='tf_saved_model'" in line
    assert not os.path.exists(output)


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="JAX does not write ONNX (export.py)"
)
def test_export_to_a_onnx_name_writes_onnx(checkpoint, tmp_path, capsys):
    import onnx

    path, _, _ = checkpoint
    output = str(tmp_path / "model.onnx")
    assert cli.main(["export", path, output]) == cli.EXIT_OK, capsys.readouterr().err
    assert "as onnx to" in capsys.readouterr().out
    assert os.path.isfile(output)  # Not a SavedModel directory.
    assert [i.name for i in onnx.load(output).graph.input] == ["images"]


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
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    # Outside the package, so that it runs before `keras_pcl` imports Keras.
    assert pyproject["project"]["scripts"] == {"keras-pcl": "keras_pcl_command:main"}
    assert pyproject["tool"]["setuptools"]["py-modules"] == ["keras_pcl_command"]


def record_process_configuration(monkeypatch):
    """What `cli.configure_process` set, in order.

    Each `configure_tensorflow_threads` call's `num_peers`, and "malloc" for
    each `configure_malloc` call.
    """
    from keras_pcl import process

    calls = []
    monkeypatch.setattr(process, "configure_tensorflow_threads", calls.append)
    monkeypatch.setattr(process, "configure_malloc", lambda: calls.append("malloc"))
    return calls


def test_a_refused_malloc_setting_is_a_one_line_warning(capsys, monkeypatch):
    from keras_pcl import process

    def refuse():
        raise RuntimeError("configure_malloc: glibc's mallopt refused it.")

    monkeypatch.setattr(process, "configure_tensorflow_threads", lambda n: None)
    monkeypatch.setattr(process, "configure_malloc", refuse)
    cli.configure_process(2)  # Goes on: malloc settings change only speed.
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "keras-pcl: warning: configure_malloc: glibc's mallopt refused it."
    ]


def test_a_bad_malloc_switch_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_PCL_CONFIGURE_MALLOC", "off")
    code = cli.main(["train", "--dataset=digits", f"--workdir={tmp_path}/w"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and len(lines) == 1, lines
    assert "KERAS_PCL_CONFIGURE_MALLOC must be '1'" in lines[0]


# `keras_pcl.training.train` runs on every backend elsewhere.


@pytest.mark.backend_independent
def test_train_then_evaluate_the_checkpoint_and_its_export(
    tmp_path, capsys, monkeypatch
):
    workdir = tmp_path / "run"
    process_calls = record_process_configuration(monkeypatch)
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
    assert process_calls == [2, "malloc"]  # A thread per peer; malloc; then train.

    args = ["--dataset=digits", "--image_size=8,8", "--validation_split=0.2"]
    assert cli.main(["evaluate", str(workdir / "pcl.keras"), *args]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "digits, validation split (359 images)" in out  # 20%, rounded half up
    for row in [
        "peer 0 (student) top-1",
        "peer 1 (student) top-1",
        "peer ensemble top-1",
        "peer 1 mean teacher top-1",
        "mean teacher (best peer) top-5",  # 10 classes: top-5 too
    ]:
        assert row in out, row
    model = keras.saving.load_model(workdir / "pcl.keras")
    best = model.best_peer.peer
    pcl_row = next(
        l for l in out.splitlines() if l.strip().startswith(f"peer {best} mean teacher")
    )

    assert cli.main(["evaluate", str(workdir / "export.keras"), *args]) == cli.EXIT_OK
    plain_row = capsys.readouterr().out.strip().splitlines()[-2]
    # The exported network is the best peer's mean teacher: same accuracy.
    assert "top-1" in plain_row and plain_row.split()[-1] == pcl_row.split()[-1]


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
    assert code == cli.EXIT_ERROR and "`network` does not exist" in lines[0]

    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--strategy=horovod"])
    assert exit.value.code == cli.EXIT_USAGE


# `fit` timing on every backend is in tests of the library.


@pytest.mark.backend_independent
def test_benchmark_times_each_method_against_vanilla(capsys, monkeypatch):
    process_calls = record_process_configuration(monkeypatch)
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
    assert process_calls == [3, "malloc"]  # cl_ilr's 3 branches; vanilla has one.


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
    # What the installed `keras-pcl` script runs (the console-script entry
    # point of pyproject.toml; see `test_console_script_is_declared`).
    script = [
        sys.executable,
        "-c",
        "import sys, keras_pcl_command; sys.exit(keras_pcl_command.main())",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # The default backend, and the loud one: on JAX and torch, their own
    # libraries set up native logging before TensorFlow is imported.
    env["KERAS_BACKEND"] = "tensorflow"

    def run(*args):
        return subprocess.run(
            [*script, *args], capture_output=True, text=True, env=env, timeout=300
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


# ---------------------------------------------------------------------------
# `keras-pcl evaluate`: every network format, every split, top-5, errors.
# ---------------------------------------------------------------------------

# The formats each backend writes (`keras_pcl.export`); tflite is not scored.
WRITABLE = {
    "keras": ("tensorflow", "jax", "torch"),
    "tf_saved_model": ("tensorflow", "jax"),
    "onnx": ("tensorflow", "torch"),
    "tflite": ("tensorflow",),
}


def write_folder(root, images, labels, names):
    """`root/<names[label]>/<i>.png` for each image."""
    from tests.data.images import write_png

    for name in names:
        os.makedirs(os.path.join(root, name))
    for i, (image, label) in enumerate(zip(images, labels)):
        write_png(os.path.join(root, names[label], f"{i:03d}.png"), image)
    return str(root)


def evaluate(capsys, *argv):
    """`keras-pcl evaluate ...`: the exit code, stdout and stderr lines."""
    code = cli.main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def percentage(out, row):
    """The percentage at the end of the first report line holding `row`."""
    line = next(l for l in out.splitlines()[1:] if row in l)
    return float(line.split()[-1].rstrip("%"))


@pytest.fixture(scope="module")
def colour_folder(checkpoint, tmp_path_factory):
    """A test folder of the checkpoint's 3 classes (its validation images)."""
    _, _, x_val = checkpoint
    _, y_val = colour_dataset(32, seed=1)
    root = tmp_path_factory.mktemp("test_folder") / "colours"
    return write_folder(root, x_val, y_val, ("c0", "c1", "c2")), y_val


@pytest.mark.parametrize("format", sorted(WRITABLE))
def test_evaluate_scores_each_format_on_a_whole_folder(
    format, checkpoint, colour_folder, tmp_path, capsys
):
    backend = keras.backend.backend()
    if backend not in WRITABLE[format]:
        pytest.skip(f"the {backend} backend does not write {format} (export.py)")
    path, model, x_val = checkpoint
    folder, labels = colour_folder
    best = model.best_peer.peer
    logits = keras.ops.convert_to_numpy(model.get_peer(best)(x_val.astype("float32")))
    expected = 100 * np.mean(np.argmax(logits, -1) == labels)

    code, out, err = evaluate(capsys, path, f"--dataset={folder}", "--split=all")
    assert code == cli.EXIT_OK, err
    assert "all images (32 images)" in out
    assert percentage(out, "peer ensemble top-1") >= 0
    row = f"peer {best} mean teacher (best peer) top-1"
    assert percentage(out, row) == pytest.approx(expected, abs=0.051)
    assert "not reported: 3 classes <= 5" in out  # Top-5 would be 100%.

    extensions = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}
    exported = str(tmp_path / ("peer" + extensions.get(format, "")))
    model.export_peer(exported, format=format)
    code, out, err = evaluate(capsys, exported, f"--dataset={folder}", "--split=all")
    assert code == cli.EXIT_OK, err
    assert percentage(out, "top-1") == pytest.approx(expected, abs=0.051)


def test_evaluate_reports_top5_and_draws_the_confusion_matrix(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = tuple(f"class_{c}" for c in range(7))
    labels = np.repeat(np.arange(7), 2)
    images = rng.integers(0, 256, (14, 8, 8, 3)).astype("uint8")
    folder = write_folder(tmp_path / "test", images, labels, names)
    network = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(7)],
        name="net",
    )
    network.set_weights([rng.normal(size=(192, 7)) / 500, np.zeros(7)])
    path = str(tmp_path / "net.keras")
    network.save(path)
    logits = keras.ops.convert_to_numpy(network(images.astype("float32")))
    top1 = 100 * np.mean(np.argmax(logits, -1) == labels)
    top5 = 100 * np.mean((np.argsort(-logits, -1)[:, :5] == labels[:, None]).any(-1))
    assert top1 < top5 < 100  # The check tells top-1 and top-5 apart.

    png = tmp_path / "confusion.png"
    argv = [path, f"--dataset={folder}", "--split=all"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, out, err = evaluate(capsys, *argv, f"--confusion_matrix={png}")
        assert code == cli.EXIT_ERROR and len(err) == 1
        assert 'pip install "keras-pcl[bench]"' in err[0]
        code, out, err = evaluate(capsys, *argv)
    else:
        code, out, err = evaluate(capsys, *argv, f"--confusion_matrix={png}")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert code == cli.EXIT_OK, err
    assert percentage(out, "net top-1") == pytest.approx(top1, abs=0.051)
    assert percentage(out, "net top-5") == pytest.approx(top5, abs=0.051)


def test_evaluate_without_matplotlib_says_how_to_install_it(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import` raises.
    code, _, err = evaluate(
        capsys, tmp_path / "net.keras", f"--confusion_matrix={tmp_path}/c.png"
    )
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert (
        'needs matplotlib. Install it with `pip install "keras-pcl[bench]"`' in err[0]
    )


def test_evaluate_scores_the_tfds_test_split(tmp_path, capsys):
    import tensorflow_datasets as tfds

    network = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ],
        name="net",
    )
    path = str(tmp_path / "cifar_net.keras")
    network.save(path)
    with tfds.testing.mock_data(num_examples=8):
        code, out, err = evaluate(capsys, path, "--dataset=cifar10", "--split=test")
    assert code == cli.EXIT_OK, err
    assert "cifar10, test split (8 images)" in out
    assert 0 <= percentage(out, "net top-5") <= 100


def test_evaluate_errors_are_one_line(checkpoint, colour_folder, tmp_path, capsys):
    path, _, _ = checkpoint
    folder, _ = colour_folder
    junk = tmp_path / "network.txt"
    junk.write_text("not a network")
    (tmp_path / "empty_dir").mkdir()
    seven_classes = write_folder(
        tmp_path / "seven",
        np.zeros((7, 8, 8, 3), "uint8"),
        np.arange(7),
        tuple(f"k{c}" for c in range(7)),
    )
    cases = [
        ([junk, f"--dataset={folder}"], "must be a .keras file, a SavedModel"),
        ([tmp_path / "empty_dir"], "a SavedModel directory (holding saved_model.pb)"),
        (
            [path, f"--dataset={tmp_path}/nowhere", "--split=all"],
            "`directory` does not exist",
        ),
        (
            [path, f"--dataset={seven_classes}", "--split=all"],
            "The network outputs 3 classes, and",
        ),
        ([path, "--dataset=cifar10", "--split=all"], "(use split='test')"),
        ([path, f"--dataset={folder}", "--split=test"], "with split='all'"),
        (
            [path, f"--dataset={folder}", "--validation_split=0"],
            "`validation_split` is 0",
        ),
        ([path, "--confusion_matrix=c.jpg"], "must be a path ending in .png"),
    ]
    for argv, message in cases:
        code, _, err = evaluate(capsys, *argv)
        assert code == cli.EXIT_ERROR and len(err) == 1, (argv, err)
        assert err[0].startswith("keras-pcl evaluate: error:"), err
        assert message in err[0], (message, err[0])
