"""PCL training steps in a fresh PyTorch process, for tests/allocator_test.py.

Usage: KERAS_BACKEND=torch python tests/malloc_step.py OUT.npz [configure]

With `configure`, `keras_pcl.process.configure_malloc` runs first. Then a
ResNet-8 PCL model (batch norm, in-step augmentation, 32x32 images, batch
64: activations of 1-4 MiB, above glibc's default mmap threshold) takes ten
SGD steps on fixed data while the minor page faults of the process are
counted after each step. The first steps grow the heap (thousands of faults
either way), so the figure is the median over the last five steps: the
steady state. Writes what `configure_malloc` returned, that median, the
logs and every weight to OUT.npz.
"""

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pcl  # noqa: E402
import keras_pcl.process  # noqa: E402
from tests.testing import colour_dataset  # noqa: E402
from tests.testing import training_arrays  # noqa: E402

BATCH_SIZE = 64
STEPS = 10
STEADY_STEPS = 5


class PageFaults(keras.callbacks.Callback):
    """The process's minor page faults at the end of each training step."""

    def __init__(self):
        super().__init__()
        self.after_step = []

    def on_train_batch_end(self, batch, logs=None):
        self.after_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def main(out, configure):
    configured = keras_pcl.process.configure_malloc() if configure else None
    keras.utils.set_random_seed(0)
    x, y = colour_dataset(BATCH_SIZE * STEPS, image_size=32)
    backbone = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(32, 32, 3))
    model = keras_pcl.PeerCollaborativeModel(backbone, 3, num_peers=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    faults = PageFaults()
    history = model.fit(
        x, y, batch_size=BATCH_SIZE, shuffle=False, verbose=0, callbacks=[faults]
    )
    per_step = np.diff(faults.after_step)[-STEADY_STEPS:]
    arrays = {
        "configured": np.array(configured is not None),
        "page_faults_per_step": np.median(per_step),
    }
    np.savez(out, **arrays, **training_arrays(model, history))


if __name__ == "__main__":
    main(sys.argv[1], "configure" in sys.argv[2:])
