"""`benchmarks/cost.py`: budgets, run order, and the equal-cost comparison."""

import importlib.util
import json
import pathlib

import pytest

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "cost.py"
_spec = importlib.util.spec_from_file_location("cost", PATH)
cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cost)

# Pure Python: the same answers on every backend.
pytestmark = pytest.mark.backend_independent


def test_budgets_parse_and_bad_ones_name_the_item():
    budgets = cost.parse_budgets(cost.DEFAULT_BUDGETS)
    assert budgets["vanilla"] == [30, 60, 135, 270, 540]
    assert budgets["pcl"] == [30, 60, 120]
    for bad, message in [
        ("vanila:30", "unknown method 'vanila'"),
        ("pcl:0", "'pcl:0'"),
        ("pcl:ten", "'pcl:ten'"),
        ("", "names no run"),
    ]:
        with pytest.raises(ValueError, match=message):
            cost.parse_budgets(bad)


def test_the_first_comparison_runs_first_then_cheapest_seed_by_seed():
    budgets = {"vanilla": [30, 60, 135, 270], "pcl": [30, 60], "one": [30]}
    first = {"vanilla": [30, 60, 135], "pcl": [30]}
    order = cost.run_order(budgets, [0, 1], {"pcl": 4.0, "one": 1.5}, first)
    assert order[:4] == [(0, "vanilla", 30), (0, "vanilla", 60), (0, "pcl", 30)] + [
        (0, "vanilla", 135)
    ]
    # Then by cost in vanilla epochs: one 45, pcl 240, vanilla 270.
    assert order[4:7] == [(0, "one", 30), (0, "pcl", 60), (0, "vanilla", 270)]
    assert order[7:] == [(1, m, e) for _, m, e in order[:7]]


@pytest.mark.parametrize("epochs", [30, 60, 90, 120, 135, 180, 270, 540])
def test_validation_always_ends_on_the_final_epoch(epochs):
    every = cost.validation_freq(epochs)
    assert epochs % every == 0 and epochs // every <= 30


def test_each_method_is_compared_with_the_best_plain_run_it_could_afford(tmp_path):
    def write(epochs, rows):
        with open(tmp_path / f"cost_{epochs}ep_runs.jsonl", "a") as f:
            for method, seed, accuracy in rows:
                run = {
                    "method": method,
                    "seed": seed,
                    "deployed_accuracy": accuracy,
                    "ensemble_accuracy": None,
                    "epoch_train_seconds": [2.0] * epochs,
                    "protocol": {"epochs": epochs, "backend": "torch"},
                    "commit": "abc",
                }
                f.write(json.dumps(run) + "\n")

    write(30, [("vanilla", 0, 0.63), ("pcl", 0, 0.65), ("pcl", 1, 0.66)])
    write(60, [("vanilla", 0, 0.67)])
    write(135, [("vanilla", 0, 0.70)])
    budgets = {"vanilla": [30, 60, 135], "pcl": [30]}
    costs = {"vanilla": 1.0, "pcl": 4.0}
    rows = cost.points(tmp_path, "cost", budgets, costs)
    pcl = next(r for r in rows if r["method"] == "pcl")
    assert pcl["cost"] == 120 and pcl["seeds"] == [0, 1]
    assert pcl["train_seconds"] == 60.0  # 30 epochs of 2 s.
    # PCL at 120 vanilla epochs can afford vanilla at 60, not 135.
    assert cost.best_plain_at(rows, pcl["cost"])["epochs"] == 60
    cost.write_report(rows, costs, str(tmp_path), "cost", "steps.json")
    table = (tmp_path / "cost.md").read_text()
    assert (
        "| pcl | 30 | [0, 1] | 65.50 ± 0.71 | - | 120 | 60 | 60 ep: 67.00 | -1.50 |"
        in (table)
    )
    assert json.loads((tmp_path / "cost.json").read_text())["step_cost"] == costs
