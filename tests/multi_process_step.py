"""Two PCL steps in one process, or as one of two JAX processes (fresh process).

Usage (KERAS_BACKEND=jax):

    python tests/multi_process_step.py single OUT.npz
    python tests/multi_process_step.py worker OUT.npz HOST:PORT PROCESS_ID
    python tests/multi_process_step.py train DATA WORKDIR HOST:PORT PROCESS_ID [KILL]

`worker` joins a cluster of two processes through `keras_pcl.training`
(`cluster_from_config` of a `TrainConfig`, `cluster.initialize`, which is
`keras.distribution.initialize`; gloo collectives between the CPU devices),
trains under `make_distribution("auto")` (`DataParallel` over both
processes' devices) on its part of the training stream (`training_stream`
with the process index) and scores its part of the validation set
(`validation_batches`: of 7 examples, one batch of 6 on 2 devices). `single`
trains the same model on the whole stream in one process, and scores those
6 examples. Both write the
logs, every weight before and after (students, mean teachers, step counter,
best-peer record), and the batches this process fed, to OUT.npz. `train`
runs `keras_pcl.training.train` as one of two processes (see `train`). Used
by tests/multi_process_test.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_pcl import training  # noqa: E402
from keras_pcl.training import cluster  # noqa: E402

BATCH_SIZE = 8
STEPS = 2
NUM_TRAIN = 20  # 2 steps of 8, and a remainder that no step sees.
NUM_VALIDATION = 7


def stream_config():
    return training.TrainConfig(
        dataset="colours", batch_size=BATCH_SIZE, epochs=1, seed=5, num_peers=3
    )


def main(mode, out_path, address=None, process_id=None):
    if mode == "worker":
        config = training.TrainConfig(
            coordinator_address=address, num_processes=2, process_id=int(process_id)
        )
        cluster.initialize(cluster.cluster_from_config(config))
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_pcl
    from tests.testing import colour_dataset
    from tests.testing import tiny_backbone

    if mode == "worker":
        distribution = training.make_distribution("auto")
        assert distribution.num_replicas == 2, distribution
        assert distribution.num_processes == 2, distribution
    else:
        distribution = training.Distribution("cpu", 1)
    images, labels = colour_dataset(NUM_TRAIN + NUM_VALIDATION, seed=1)
    examples = tf.data.Dataset.from_tensor_slices(
        (images[:NUM_TRAIN], labels[:NUM_TRAIN])
    )
    held_out = tf.data.Dataset.from_tensor_slices(
        (images[NUM_TRAIN:], labels[NUM_TRAIN:])
    )
    stream = training.training_stream(
        examples,
        stream_config(),
        STEPS,
        num_processes=distribution.num_processes,
        process_index=distribution.process_index,
    )
    if mode == "worker":
        validation = training.validation_batches(held_out, BATCH_SIZE, distribution)
    else:  # The 6 examples that 2 devices score (one batch divisible by 2).
        validation = held_out.take(6).batch(BATCH_SIZE)

    keras.utils.set_random_seed(0)
    model = keras_pcl.PeerCollaborativeModel(
        tiny_backbone(),
        num_classes=3,
        split_at="split",
        augmentation="default",
        rampup_steps=2,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    initial = model.get_weights()
    history = model.fit(
        stream,
        epochs=1,
        steps_per_epoch=STEPS,
        validation_data=validation,
        callbacks=[keras_pcl.callbacks.BestPeerTracker(verbose=0)],
        shuffle=False,
        verbose=0,
    )
    arrays = {f"log_{k}": np.array(v) for k, v in history.history.items()}
    for i, (w, w0, w1) in enumerate(zip(model.weights, initial, model.get_weights())):
        arrays[f"initial_weight_{i}_{w.path}"] = w0
        arrays[f"weight_{i}_{w.path}"] = w1
    fed = list(stream.as_numpy_iterator())
    arrays["fed_images"] = np.stack([x for x, _ in fed])
    arrays["fed_labels"] = np.stack([y for _, y in fed])
    arrays["validation_labels"] = np.concatenate(
        [y for _, y in validation.as_numpy_iterator()]
    )
    np.savez(out_path, **arrays)


def train(data_dir, workdir, address, process_id, kill_at_step=None):
    """`training.train` as one of two processes, the others' flags given.

    The configuration of tests/resumable_run.py (ResNet-8, 2 epochs of 5
    steps of 4 images, backups every 2 steps) with the cluster fields; with
    `kill_at_step`, this process SIGKILLs itself after that step.
    """
    import dataclasses

    from tests.resumable_run import KillAtStep
    from tests.resumable_run import config

    run_config = dataclasses.replace(
        config(data_dir, workdir),
        coordinator_address=address,
        num_processes=2,
        process_id=int(process_id),
    )
    extra = [KillAtStep(int(kill_at_step))] if kill_at_step else []
    result = training.train(run_config, callbacks=extra)
    print("initial_step", result["initial_step"], "final_step", result["final_step"])


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
