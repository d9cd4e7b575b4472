"""PCL under `tf.distribute.MirroredStrategy`, fast paths on and off (fresh process).

Usage: KERAS_BACKEND=tensorflow python tests/mirrored_batch_norm_step.py OUT.npz

For tests/fast_paths_test.py. The process gets two logical CPUs before
TensorFlow starts; a ResNet-8 PCL model (batch norm, in-step augmentation)
then trains for two steps of global batch 16 on both replicas, once with
`KERAS_PCL_FAST_PATHS=1` (TensorFlow's fused batch norm, run in each
replica) and once with `0` (Keras' ops), from the same seed. Writes both
runs' logs, initial and final weights (and which are trainable), and how
many fused batch norms each run traced, to OUT.npz.
"""

import os
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_pcl  # noqa: E402
from keras_pcl import fast_paths  # noqa: E402
from tests.testing import colour_dataset  # noqa: E402

FUSED = []
_batch_norm = fast_paths.batch_norm


def counted_batch_norm(layer, x):
    FUSED.append(layer.name)
    return _batch_norm(layer, x)


fast_paths.batch_norm = counted_batch_norm


def run(flag, arrays):
    os.environ["KERAS_PCL_FAST_PATHS"] = flag
    FUSED.clear()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(3)
        network = keras_pcl.backbones.CIFARResNet(depth=8, input_shape=(8, 8, 3))
        model = keras_pcl.PeerCollaborativeModel(network, 3, num_peers=3)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True))
    start = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    x, y = colour_dataset(32, image_size=8, seed=0)
    logs = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    name = "fast" if flag == "1" else "plain"
    arrays[f"{name}_fused_batch_norms"] = np.array(len(FUSED))
    for key, values in logs.history.items():
        arrays[f"{name}_log_{key}"] = np.asarray(values)
    # By position: the second model's paths carry a `_1` suffix.
    arrays[f"{name}_paths"] = np.array([w.path for w in model.weights])
    arrays[f"{name}_trainable"] = np.array([w.trainable for w in model.weights])
    for i, w in enumerate(model.weights):
        arrays[f"{name}_initial_{i}"] = start[w.path]
        arrays[f"{name}_weight_{i}"] = keras.ops.convert_to_numpy(w)


if __name__ == "__main__":
    arrays = {}
    run("1", arrays)
    run("0", arrays)
    np.savez(sys.argv[1], **arrays)
