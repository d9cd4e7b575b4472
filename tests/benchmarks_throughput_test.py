"""`benchmarks/throughput.py` times every `--mixed_precision` policy side by side.

The script builds each model under its own Keras dtype policy and must put
the global policy back between them; its JSON names each model's policy
and summarises PCL and vanilla per policy. Tiny networks (ResNet-8, batch
4, 8x8 images, one timed step), run in a fresh process. The script is
backend-independent code: torch only in CI (`tests/ci_budget.py`).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "throughput.py"
TINY = [
    "--depth=8",
    "--image_size=8",
    "--batch_size=4",
    "--steps=1",
    "--repeats=1",
    "--warmup_steps=1",
    "--models=pcl,vanilla",
    "--fusion=fused",
]


def _run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *args],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.backend_independent
def test_times_each_dtype_policy_side_by_side(tmp_path):
    out = tmp_path / "throughput.json"
    result = _run("--mixed_precision=none,bfloat16", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())

    policies = {name: r["dtype_policy"] for name, r in figures["details"].items()}
    assert policies == {
        "pcl": "float32",
        "vanilla": "float32",
        "pcl_bfloat16": "mixed_bfloat16",
        "vanilla_bfloat16": "mixed_bfloat16",
    }
    assert figures["mixed_precision"] == ["none", "bfloat16"]
    bf16 = figures["by_policy"]["bfloat16"]
    details = figures["details"]
    assert bf16["pcl_images_per_sec"] == details["pcl_bfloat16"]["images_per_sec"]
    # Both ratios are quotients of the figures above (float64 division).
    assert bf16["ratio"] == (
        details["vanilla_bfloat16"]["images_per_sec"]
        / details["pcl_bfloat16"]["images_per_sec"]
    )
    assert bf16["pcl_speedup_over_float32"] == (
        details["pcl_bfloat16"]["images_per_sec"] / details["pcl"]["images_per_sec"]
    )
    assert figures["by_policy"]["none"]["pcl_speedup_over_float32"] == 1.0
    assert "mixed_bfloat16: PCL/vanilla" in result.stdout


@pytest.mark.backend_independent
def test_rejects_an_unknown_policy_naming_the_flag():
    result = _run("--mixed_precision=none,fp8")
    assert result.returncode != 0
    assert "--mixed_precision takes a list of ['none', 'float16', 'bfloat16']" in (
        result.stderr
    )
    assert "Received: --mixed_precision=none,fp8" in result.stderr
    assert "Traceback" not in result.stderr
