"""`benchmarks/gpu_run.py`: its CPU dry run, and its preflight failing fast.

The GPU run has one 15-minute lease: every step of the script, with the
flags the GPU run passes, runs here first on tiny sizes (`--dry_run`). The
script only starts child processes, so the test runs on one suite's backend
(torch, see tests/ci_budget.py), and so does the dry run's backend: torch
builds and steps the tiny models eagerly in seconds. It takes every flag
but `steps_per_execution` > 1, which Keras' torch backend refuses: the
throughput step at the larger value is skipped there (`KERAS_BACKEND=jax
python benchmarks/gpu_run.py --dry_run ...` runs it at 2, minutes of XLA
compilation on 2 cores).
"""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_run.py")


def write_bundle(path, train=16, validation=8, size=8):
    """A tiny bundle in `benchmarks/accuracy.py --write_bundle`'s format."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def encoded(count):
        labels = np.arange(count) % 2
        images = rng.integers(0, 120, size=(count, size, size, 3)).astype("uint8")
        images[np.arange(count), :, :, labels] += 120
        pngs = [tf.io.encode_png(image).numpy() for image in images]
        return np.array(pngs, dtype=object), labels

    train_png, train_labels = encoded(train)
    validation_png, validation_labels = encoded(validation)
    np.savez(
        path,
        train_jpeg=train_png,
        train_labels=train_labels,
        validation_jpeg=validation_png,
        validation_labels=validation_labels,
        class_names=np.array(["a", "b"]),
    )


def run(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
    )


@pytest.mark.backend_independent
def test_dry_run_runs_every_step_and_packs_the_results(tmp_path):
    bundle = tmp_path / "tiny.npz"
    write_bundle(bundle)
    out = tmp_path / "out"
    result = run(
        [
            "--dry_run",
            f"--bundle={bundle}",
            f"--out={out}",
            f"--workdir={tmp_path / 'work'}",
        ],
        env={"KERAS_BACKEND": "torch"},
        timeout=1300,  # The dry run's own budget is 1200 s; it takes ~1 min.
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed steps: none" in result.stdout
    assert "throughput_large: skipped, torch refuses" in result.stdout
    # What comes back from the device: the archive and the summary.
    assert sorted(os.listdir(out)) == ["gpu_results.tgz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["backend"] == "torch"
    assert [s["step"] for s in summary["steps"]] == [
        "preflight",
        "throughput_spe1",
        "recipe",
    ]
    assert all(s["exit"] == 0 for s in summary["steps"])
    # Every model of the GPU run's throughput step, in float32 and bf16.
    assert list(summary["throughput"]) == ["steps_per_execution=1"]
    for table in summary["throughput"].values():
        assert sorted(table["models"]) == sorted(
            f"{model}{suffix}"
            for model in ("pcl", "pcl_separate", "vanilla")
            for suffix in ("", "_bfloat16")
        )
        assert all(r["images_per_sec"] > 0 for r in table["models"].values())
    # The recipe trained PCL for the epochs the time left allows (1 here).
    assert summary["recipe_epochs"] == 1
    [recipe] = summary["recipe_runs"]
    assert recipe["method"] == "pcl"
    with tarfile.open(out / "gpu_results.tgz") as tar:
        names = set(tar.getnames())
    for name in (
        "preflight.log",
        "throughput_spe1.json",
        "recipe.log",
        "gpu_recipe_runs.jsonl",
        "summary.json",
    ):
        assert f"gpu_results/{name}" in names, name
    assert any(n.startswith("gpu_results/exported/") for n in names)


@pytest.mark.backend_independent
def test_preflight_stops_before_measuring_and_says_what_is_missing(tmp_path):
    # A machine without Keras (as the GPU machine is): a `keras` that does not
    # import, first on the path.
    fake = tmp_path / "no_keras" / "keras"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no keras here')\n")
    result = run(
        [
            f"--bundle={tmp_path / 'missing.npz'}",
            f"--wheels={tmp_path / 'no_wheels'}",
            f"--out={tmp_path / 'out'}",
            f"--workdir={tmp_path / 'work'}",
        ],
        env={"PYTHONPATH": str(tmp_path / "no_keras")},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "No CIFAR-10 bundle at --bundle=" in result.stderr
    assert "--write_bundle=" in result.stderr
    assert "Keras cannot be imported here" in result.stderr
    assert "['keras', 'namex', 'optree']" in result.stderr
    assert "pip download" in result.stderr
    assert "== throughput" not in result.stdout  # Nothing measured.

    # Everything there, but no GPU: the GPU run refuses to time a CPU.
    bundle = tmp_path / "tiny.npz"
    write_bundle(bundle, train=4, validation=2)
    result = run(
        [
            f"--bundle={bundle}",
            f"--out={tmp_path / 'out'}",
            f"--workdir={tmp_path / 'work'}",
        ],
        env={"KERAS_BACKEND": "jax"},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "sees no GPU (platform 'cpu')" in result.stderr
    assert "== throughput" not in result.stdout
