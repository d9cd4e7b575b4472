"""PCL training steps in a fresh PyTorch process, for tests/allocator_test.py.

Usage: KERAS_BACKEND=torch python tests/malloc_step.py OUT.npz [configure]

With `configure`, `keras_pcl.allocator.configure_malloc` runs first. Then a
ResNet-8 PCL model (batch norm, in-step augmentation, 32x32 images, batch
64: activations of 1-4 MiB, above glibc's default mmap threshold) takes two
SGD steps on fixed data, and two more while the minor page faults of the
process are counted. Writes what `configure_malloc` returned, the page
faults, the logs and every weight to OUT.npz.
"""

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pcl  # noqa: E402
from tests.testing import colour_dataset  # noqa: E402
from tests.testing import training_arrays  # noqa: E402

BATCH_SIZE = 64
STEPS = 2


def main(out, configure):
    configured = keras_pcl.allocator.configure_malloc() if configure else None
    keras.utils.set_random_seed(0)
    x, y = colour_dataset(BATCH_SIZE * STEPS, image_size=32)
    backbone = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(32, 32, 3))
    model = keras_pcl.PeerCollaborativeModel(backbone, 3, num_peers=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    fit = dict(batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, **fit)  # The first steps allocate everything once.
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    history = model.fit(x, y, **fit)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    arrays = {
        "configured": np.array(configured is not None),
        "page_faults_per_step": np.array(faults / STEPS),
    }
    np.savez(out, **arrays, **training_arrays(model, history))


if __name__ == "__main__":
    main(sys.argv[1], "configure" in sys.argv[2:])
