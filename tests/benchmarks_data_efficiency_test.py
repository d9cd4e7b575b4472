"""`benchmarks/data_efficiency.py`: the schedule rule and the curve's points."""

import importlib.util
import json
import pathlib

import pytest

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "data_efficiency.py"
_spec = importlib.util.spec_from_file_location("data_efficiency", PATH)
data_efficiency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_efficiency)


@pytest.mark.parametrize(
    "images, epochs", [(1280, 117), (2560, 58), (5000, 30), (10240, 15), (45000, 3)]
)
def test_every_size_gets_about_the_protocols_steps(images, epochs):
    assert data_efficiency.epochs_for(images) == epochs
    steps = epochs * (images // 128)
    assert abs(steps - 30 * 39) <= 0.15 * 30 * 39  # 1,170 steps, rounded epochs.


@pytest.mark.parametrize("images", [1280, 2560, 10240, 45000])
def test_validation_is_sparse_but_always_on_the_final_epoch(images):
    epochs = data_efficiency.epochs_for(images)
    every = data_efficiency.validation_freq(images)
    assert epochs % every == 0  # Keras validates epochs N, 2N, ..., the last.
    assert epochs // every <= 15
    assert data_efficiency.validation_freq(5000) == 1  # the protocol's plot


def test_the_curve_reads_each_sizes_runs_and_skips_other_schedules(tmp_path):
    def write(tag, rows):
        with open(tmp_path / f"{tag}_runs.jsonl", "w") as f:
            for method, seed, accuracy, epochs in rows:
                run = {
                    "method": method,
                    "seed": seed,
                    "deployed_accuracy": accuracy,
                    "protocol": {"epochs": epochs},
                }
                f.write(json.dumps(run) + "\n")

    write("accuracy_cpu", [("pcl", 0, 0.66, 30), ("pcl", 1, 0.64, 30)])
    write("data_efficiency_1280", [("pcl", 0, 0.5, 117), ("pcl", 1, 0.9, 3)])
    points = data_efficiency.curve(tmp_path, [1280, 5000], ["pcl", "vanilla"])
    assert points["vanilla"] == []
    (small, protocol) = points["pcl"]
    assert small[:3] == (1280, 117, [0]) and small[3] == pytest.approx(0.5)
    assert protocol[:3] == (5000, 30, [0, 1])
    assert protocol[3] == pytest.approx(0.65) and protocol[4] == pytest.approx(
        0.0141421, rel=1e-4
    )
