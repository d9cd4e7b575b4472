"""Two PCL training steps in a fresh TensorFlow process, for tests/threads_test.py.

Usage: KERAS_BACKEND=tensorflow python tests/threaded_step.py OUT.npz [configure]

With `configure`, `keras_pcl.process.configure_tensorflow_threads` runs
first (before TensorFlow runs an op), asked for one more thread than the
process has cores so that it changes the pool on any machine; otherwise
the inter-op pool keeps whatever `TF_NUM_INTEROP_THREADS` says. Then a
ResNet-8 PCL model (batch norm, in-step augmentation) takes two SGD steps on
fixed data. Writes the inter-op pool size TensorFlow reports, the logs and
every weight to OUT.npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_pcl  # noqa: E402
import keras_pcl.process  # noqa: E402

if "configure" in sys.argv[2:]:
    configured = keras_pcl.process.configure_tensorflow_threads(
        num_peers=len(os.sched_getaffinity(0)) + 1
    )
else:
    configured = 0

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.testing import colour_dataset  # noqa: E402
from tests.testing import training_arrays  # noqa: E402


def main(out):
    keras.utils.set_random_seed(0)
    x, y = colour_dataset(16, image_size=16)
    backbone = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(16, 16, 3))
    model = keras_pcl.PeerCollaborativeModel(backbone, 3, num_peers=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    arrays = {
        "configured": np.array(configured or 0),
        "inter_op": np.array(tf.config.threading.get_inter_op_parallelism_threads()),
    }
    np.savez(out, **arrays, **training_arrays(model, history))


if __name__ == "__main__":
    main(sys.argv[1])
