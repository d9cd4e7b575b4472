"""Which tests CI skips on some backends, and how to run them all.

The markers `backend_independent` and `slow_on_jax` (`tests/conftest.py`)
select them; this page says why each test carries one.

CI runs the suite once per backend on 2 CPU cores within a time budget.

* On JAX, building a network compiles one XLA program per distinct weight
  shape (random initialisers): the full-size paper networks and the
  keras.applications models take minutes to build. Their checks are about
  the architecture and give the same answer on every backend; they run on
  TensorFlow and torch (`@pytest.mark.slow_on_jax`).
* A PCL training step of the fixed-size networks (VGG-16, ResNet-18,
  MobileNetV2) is compiled by XLA on JAX and traced by `tf.function` on
  TensorFlow, half a minute to a minute and a half each; torch runs it
  eagerly in seconds, so CI runs those on torch (`@pytest.mark.backend_independent`). So
  does the step (with an export and a reload) of the small bottleneck
  ResNet and DenseNet: 28-48 s each on JAX and TensorFlow (measured in CI,
  2026-11-27); the basic-block ResNet trains on every backend throughout
  `tests/model_test.py`.
* The example scripts run end to end in a fresh process. The quickstart
  is the README's first command, which runs on the default backend,
  TensorFlow: CI runs it there (`backend_independent(on="tensorflow")`; 60-95 s per
  backend). `examples/train_cifar.py`, the ImageNet recipe's step on mock
  data and the CLI's train-then-evaluate test (40-80 s each on TensorFlow
  and JAX) run on torch only: they are thin wrappers around
  `keras_pcl.training.train`, which the SIGKILL resume test runs on every
  backend.
* `keras-pcl benchmark`'s smoke test (26-31 s on JAX and TensorFlow) and
  `tests/docs_test.py` (the how-to recipes, the generated API pages, the
  snippets of the docs pages) check backend-independent code: torch only,
  except the README's snippets, which write and load a SavedModel, on
  TensorFlow.
* `examples/colab_tpu.ipynb` trains on JAX (its cells choose it): the JAX
  run executes its cells, on 1 and 8 simulated devices at once
  (`tests/examples/colab_tpu_test.py`, skipped on the other backends
  whatever `KERAS_PCL_SLOW_TESTS` says). `benchmarks/gpu_run.py --dry_run`
  only starts child processes, on torch (`@pytest.mark.backend_independent`).

`KERAS_PCL_SLOW_TESTS=1` runs every test on every backend.
"""

import os

RUN_ALL = bool(os.environ.get("KERAS_PCL_SLOW_TESTS"))

REASON = "CI time budget, see tests/ci_budget.py (KERAS_PCL_SLOW_TESTS=1 runs it)"
