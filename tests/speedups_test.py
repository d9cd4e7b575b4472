"""`keras_pcl.speedups`: "auto" follows the committed figures; True/False rule."""

import json
import logging
import os

import keras
import pytest

import keras_pcl
from keras_pcl import speedups
from tests.testing import tiny_backbone

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_FAST_PATHS = BACKEND in ("torch", "tensorflow")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("KERAS_PCL_FAST_PATHS", raising=False)


def on(monkeypatch, kind):
    """Pretends the backend trains on a device of this kind."""
    monkeypatch.setattr(speedups, "device_kind", lambda: kind)


def test_auto_on_a_cpu_uses_what_the_cpu_figures_show(monkeypatch):
    on(monkeypatch, "cpu")
    chosen = speedups.resolve()
    # Fast paths: measured faster on torch and TensorFlow CPUs (none on JAX).
    assert chosen.fast_paths is HAS_FAST_PATHS
    # Fused views: measured slower (torch, JAX) or no faster (TF) on a CPU.
    assert chosen.fuse_views is False
    assert chosen.device_kind == "cpu" and chosen.backend == BACKEND
    text = str(chosen)
    assert f"({BACKEND}, cpu)" in text
    assert f"benchmarks/results/throughput_fusion_{BACKEND}.json" in text
    if HAS_FAST_PATHS:
        assert "fast paths on (auto: " in text
        assert "benchmarks/results/vs_pytorch_20261201.json" in text


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_auto_on_an_accelerator_fuses_views_and_keeps_keras_kernels(monkeypatch, kind):
    on(monkeypatch, kind)
    chosen = speedups.resolve()
    # No committed figure for the fast paths on an accelerator: Keras' layers.
    assert chosen.fast_paths is False
    # Fused views are Keras ops rearranged exactly: on, and said unmeasured.
    assert chosen.fuse_views is True
    if HAS_FAST_PATHS:
        assert "fast paths off (auto: no committed figure" in str(chosen)
    else:
        assert "fast paths off (none for jax" in str(chosen)
    assert "fused views on (auto: expected faster" in str(chosen)
    assert "unmeasured" in str(chosen)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_true_forces_and_false_disables(monkeypatch, kind):
    on(monkeypatch, kind)
    forced = speedups.resolve(fast_paths=True, fuse_views=True)
    assert forced.fast_paths is HAS_FAST_PATHS  # JAX has none to force.
    assert forced.fuse_views is True
    off = speedups.resolve(fast_paths=False, fuse_views=False)
    assert (off.fast_paths, off.fuse_views) == (False, False)
    assert "(fuse_views=False)" in str(off)


def test_the_environment_variable_overrides_auto_only(monkeypatch):
    on(monkeypatch, "gpu")
    monkeypatch.setenv("KERAS_PCL_FAST_PATHS", "1")
    assert speedups.resolve().fast_paths is HAS_FAST_PATHS
    assert speedups.resolve(fast_paths=False).fast_paths is False
    on(monkeypatch, "cpu")
    monkeypatch.setenv("KERAS_PCL_FAST_PATHS", "0")
    assert speedups.resolve().fast_paths is False
    assert speedups.resolve(fast_paths=True).fast_paths is HAS_FAST_PATHS
    if HAS_FAST_PATHS:
        monkeypatch.setenv("KERAS_PCL_FAST_PATHS", "yes")
        with pytest.raises(ValueError, match="KERAS_PCL_FAST_PATHS must be"):
            speedups.resolve()


@pytest.mark.parametrize("name", ["fast_paths", "fuse_views"])
def test_a_bad_value_is_an_error_that_names_the_argument(name):
    with pytest.raises(ValueError, match=f"{name}='yes'"):
        speedups.resolve(**{name: "yes"})
    with pytest.raises(ValueError, match=f"{name}='yes'"):
        keras_pcl.PeerCollaborativeModel(tiny_backbone(), 2, **{name: "yes"})


def test_a_model_uses_says_and_saves_its_policy(monkeypatch, caplog):
    on(monkeypatch, "gpu")
    with caplog.at_level(logging.INFO, logger="keras_pcl"):
        model = keras_pcl.PeerCollaborativeModel(
            tiny_backbone(), 2, split_at="split", fast_paths=True
        )
    assert model.speedups == speedups.resolve(fast_paths=True)
    assert model._fast_paths is HAS_FAST_PATHS
    lines = [r.getMessage() for r in caplog.records if r.name == "keras_pcl"]
    assert lines == [str(model.speedups)]  # One line per model.
    config = model.get_config()
    assert (config["fast_paths"], config["fuse_views"]) == (True, "auto")
    clone = keras_pcl.PeerCollaborativeModel.from_config(config)
    assert (clone.fast_paths, clone.fuse_views) == (True, "auto")
    assert clone.speedups == model.speedups


@pytest.mark.backend_independent  # Reads files: the same on every backend.
def test_every_figure_in_the_table_is_the_committed_one():
    """Each entry names a file in benchmarks/results/ that shows its speed-up.

    The speed-up is recomputed from the file (images/s with the speed-up
    over images/s without it, in one run), so the table cannot drift from
    the evidence; 0.005 is the rounding of the table's three decimals.
    """
    assert speedups.EVIDENCE
    for (name, backend, kind), evidence in speedups.EVIDENCE.items():
        assert name in ("fast_paths", "fuse_views")
        assert backend in ("torch", "tensorflow", "jax")
        assert kind in speedups.DEVICE_KINDS
        path = os.path.join(ROOT, evidence.result_file)
        assert evidence.result_file.startswith("benchmarks/results/")
        assert os.path.isfile(path), evidence.result_file
        with open(path) as f:
            result = json.load(f)
        if name == "fast_paths":
            runs = result["results"]
            with_it = runs[f"keras_pcl_{backend}"]
            without = runs[f"keras_pcl_{backend}_keras_ops"]
            assert with_it["fast_paths"] is True and without["fast_paths"] is False
            measured = (
                with_it["pcl"]["images_per_sec"] / without["pcl"]["images_per_sec"]
            )
        else:
            assert result["backend"] == backend and result["fusion"] == "both"
            measured = result["fused_speedup"]
        assert abs(measured - evidence.speedup) < 0.005, (name, backend, measured)
