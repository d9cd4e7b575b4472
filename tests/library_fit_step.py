"""Imports keras_pcl and trains PCL in a fresh process, for tests/process_test.py.

Usage: `python tests/library_fit_step.py OUT.npz`. With `argv[0]` set to
`keras-pcl`, as in the console script, it records every `os.dup2` onto file
descriptor 2 while `keras_pcl` is imported (TensorFlow is not imported
before it), then the process-wide state the library must leave alone:
descriptor 2's identity, the environment, TensorFlow's thread pools (and
torch's on that backend), after the import and after a `fit`.
"""

import os
import sys

# The repository root, for `tests.testing` (a script's sys.path[0] is tests/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
out = sys.argv[1]
sys.argv[0] = "keras-pcl"
redirected = []
_dup2 = os.dup2


def recording_dup2(fd, fd2, *args, **kwargs):
    redirected.append(fd2)
    return _dup2(fd, fd2, *args, **kwargs)


os.dup2 = recording_dup2
fd2_before = os.fstat(2)
environ_before = dict(os.environ)
assert "tensorflow" not in sys.modules and "keras" not in sys.modules

import keras_pcl  # noqa: E402

os.dup2 = _dup2
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.testing import colour_dataset  # noqa: E402
from tests.testing import tiny_backbone  # noqa: E402


def pools():
    values = [
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    ]
    if keras.backend.backend() == "torch":
        import torch

        values += [torch.get_num_threads(), torch.get_num_interop_threads()]
    return values


def changed_environment():
    after = dict(os.environ)
    keys = set(after) | set(environ_before)
    return sorted(k for k in keys if after.get(k) != environ_before.get(k))


def fd2_identity():
    st = os.fstat(2)
    return [st.st_dev, st.st_ino]


imported = {"pools": pools(), "environ": changed_environment(), "fd2": fd2_identity()}
x, y = colour_dataset(8, image_size=8)
model = keras_pcl.PeerCollaborativeModel(tiny_backbone(), 3, split_at="split")
model.compile(optimizer="sgd")
model.fit(x, y, batch_size=4, epochs=1, verbose=0)
np.savez(
    out,
    redirected_fds=np.array(redirected, "int64"),
    fd2_before=np.array([fd2_before.st_dev, fd2_before.st_ino]),
    fd2_imported=np.array(imported["fd2"]),
    fd2_fitted=np.array(fd2_identity()),
    pools_imported=np.array(imported["pools"]),
    pools_fitted=np.array(pools()),
    environ_imported=np.array(imported["environ"], dtype=str),
    environ_fitted=np.array(changed_environment(), dtype=str),
)
