"""Two training steps on 2 replicas vs. on one device (run in a fresh process).

Usage: KERAS_BACKEND=tensorflow|jax python tests/distributed_step.py OUT.npz

The process is given two CPU devices before the backend starts (TensorFlow:
two logical CPUs; JAX: the parent sets
`XLA_FLAGS=--xla_force_host_platform_device_count=2`). The same model (no
batch norm, no augmentation, so that nothing depends on how the batch is
split) takes two SGD steps on the same global batches, once on one device
and once data-parallel on two (`tf.distribute.MirroredStrategy` /
`keras.distribution.DataParallel`). Writes the logs and every weight
(students, mean teachers, step counter) of both runs, and the initial
weights (to size the tolerance by the update), to OUT.npz.
"""

import os
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_pcl  # noqa: E402
from tests.testing import colour_dataset  # noqa: E402


def backbone():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="split")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def make_model():
    keras.utils.set_random_seed(0)
    model = keras_pcl.PeerCollaborativeModel(
        backbone(),
        num_classes=3,
        split_at="split",
        augmentation=None,
        rampup_steps=2,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def train(model, initial_weights):
    model.set_weights(initial_weights)
    x, y = colour_dataset(16, seed=0)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return history.history, model.get_weights()


def main(out_path):
    single = make_model()
    initial = single.get_weights()
    single_logs, single_weights = train(single, initial)
    if BACKEND == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            parallel = make_model()
    else:
        import jax

        assert len(jax.devices()) == 2, jax.devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices())
        )
        parallel = make_model()
    parallel_logs, parallel_weights = train(parallel, initial)
    arrays = {}
    for key in ("loss", "ce", "pe", "pm"):
        arrays[f"single_log_{key}"] = np.array(single_logs[key])
        arrays[f"parallel_log_{key}"] = np.array(parallel_logs[key])
    for i, (w, w0, a, b) in enumerate(
        zip(single.weights, initial, single_weights, parallel_weights)
    ):
        arrays[f"initial_weight_{i}_{w.path}"] = w0
        arrays[f"single_weight_{i}_{w.path}"] = a
        arrays[f"parallel_weight_{i}_{w.path}"] = b
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
