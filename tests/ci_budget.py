"""Which tests CI skips on some backends, and how to run them all.

CI runs the suite once per backend on 2 CPU cores within a time budget.

* On JAX, building a network compiles one XLA program per distinct weight
  shape (random initialisers): the full-size paper networks and the
  keras.applications models take minutes to build. Their checks are about
  the architecture and give the same answer on every backend; they run on
  TensorFlow and torch (`slow_on_jax`).
* A PCL training step of the fixed-size networks (VGG-16, ResNet-18,
  MobileNetV2) is compiled by XLA on JAX and traced by `tf.function` on
  TensorFlow, half a minute to a minute and a half each; torch runs it
  eagerly in seconds, so CI runs those on torch (`torch_only_in_ci`). So
  does the step (with an export and a reload) of the small bottleneck
  ResNet and DenseNet: 28-48 s each on JAX and TensorFlow (measured in CI,
  2026-11-27); the basic-block ResNet trains on every backend throughout
  `tests/model_test.py`.
* The example scripts run end to end in a fresh process. The quickstart
  (the README's first command, which uses the default TensorFlow backend)
  runs on TensorFlow and torch; it takes 95 s on JAX (`slow_on_jax`).
  `examples/train_cifar.py` (40-80 s on TensorFlow and JAX) runs on torch
  only; it is a thin absl wrapper around `keras_pcl.training.train`, which
  the SIGKILL resume test and the CLI test run on every backend.
* `keras-pcl benchmark`'s smoke test (26-31 s on JAX and TensorFlow) and
  `tests/docs_test.py` (the how-to recipes, the generated API pages) check
  backend-independent code: torch only.

`KERAS_PCL_SLOW_TESTS=1` runs every test on every backend.
"""

import os

import keras
import pytest

_ALL = bool(os.environ.get("KERAS_PCL_SLOW_TESTS"))
_BACKEND = keras.backend.backend()

SKIP_SLOW_ON_JAX = _BACKEND == "jax" and not _ALL
SKIP_UNLESS_TORCH = _BACKEND != "torch" and not _ALL

REASON = "CI time budget, see tests/ci_budget.py (KERAS_PCL_SLOW_TESTS=1 runs it)"

slow_on_jax = pytest.mark.skipif(SKIP_SLOW_ON_JAX, reason=REASON)
torch_only_in_ci = pytest.mark.skipif(SKIP_UNLESS_TORCH, reason=REASON)
