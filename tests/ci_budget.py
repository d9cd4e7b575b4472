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
  eagerly in seconds, so CI runs those on torch (`torch_only_in_ci`). The
  step of the small bottleneck ResNet and DenseNet, with an export and a
  reload, takes 40-50 s on JAX (measured 2026-11-27); it runs on TensorFlow
  and torch.
* The example scripts run end to end in a fresh process: the quickstart
  (the README's first command, which uses the default TensorFlow backend)
  and `examples/train_cifar.py` take 80-95 s each on JAX, mostly XLA
  compilation, against 20-25 s on torch. Both are thin wrappers around
  `keras_pcl.training.train`, which the SIGKILL resume test and the CLI
  test run on JAX; CI runs the scripts on TensorFlow and torch
  (`slow_on_jax`).
* `tests/docs_test.py` checks backend-independent documentation (the
  how-to recipes, the generated API pages): on torch only
  (`torch_only_in_ci`).

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
