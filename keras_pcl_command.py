"""The `keras-pcl` command's entry point, which owns its process.

Kept outside the `keras_pcl` package on purpose: importing any
`keras_pcl.*` module first runs `keras_pcl/__init__.py`, which imports
Keras, which imports TensorFlow on every backend, and TensorFlow's first
import writes native start-up lines (oneDNN, CUDA stubs, "All log messages
before absl::InitializeLog()") straight to file descriptor 2, whatever
`TF_CPP_MIN_LOG_LEVEL` says (TensorFlow 2.21). The command imports
TensorFlow first, with those lines hidden (`quiet_tensorflow_import`), then
runs `keras_pcl.cli.main`. The library itself (`import keras_pcl`) leaves
descriptor 2, the environment and TensorFlow's output alone.
"""

import os
import re
import sys
import tempfile

# Native log lines (absl/glog format: `I0000 00:00:...` INFO, `W...`
# WARNING) and the banners TensorFlow prints while it is imported.
_STARTUP_NOISE = re.compile(
    r"^([IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def quiet_tensorflow_import():
    """Imports TensorFlow (if installed) without its native start-up lines.

    The first import of TensorFlow writes INFO and WARNING lines straight to
    file descriptor 2 (TensorFlow 2.21 ignores `TF_CPP_MIN_LOG_LEVEL` for
    them). This imports it with descriptor 2 sent to a file and writes back
    every other line (errors, Python warnings). `TF_CPP_MIN_LOG_LEVEL`
    defaults to 3 for the later native lines; a user's value wins, and 0
    keeps the start-up lines too. Does nothing if TensorFlow is imported
    already.
    """
    if "tensorflow" in sys.modules:
        return
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:  # JAX or PyTorch without TensorFlow.
            pass
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(True)
            sys.stderr.write("".join(l for l in lines if not _STARTUP_NOISE.match(l)))


def main(argv=None):
    """Entry point of the `keras-pcl` console script."""
    quiet_tensorflow_import()
    from keras_pcl import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
