"""Runs `keras_pcl.training.train` and optionally SIGKILLs itself (fresh process).

Usage: python tests/resumable_run.py DATA_DIR WORKDIR [KILL_AT_STEP]

A tiny deterministic configuration (ResNet-8 on 8x8 images, backups every 2
steps). With KILL_AT_STEP, the process kills itself with SIGKILL right after
that global training step (after the step's backup callback ran), like a
preempted machine. Used by tests/training_test.py.
"""

import os
import signal
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_pcl import training  # noqa: E402


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        done = int(keras.ops.convert_to_numpy(self.model.step_counter.value))
        if done >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def config(data_dir, workdir):
    return training.TrainConfig(
        dataset=data_dir,
        backbone="resnet8",
        num_peers=2,
        epochs=2,
        batch_size=4,
        lr=0.05,
        lr_decay_epochs=(2,),
        rampup_epochs=1.0,
        validation_split=0.25,
        seed=3,
        deterministic=True,
        workdir=workdir,
        save_freq=2,
        export_format="none",
        steps_per_epoch=5,
        verbose=0,
    )


if __name__ == "__main__":
    extra = [KillAtStep(int(sys.argv[3]))] if len(sys.argv) > 3 else []
    result = training.train(config(sys.argv[1], sys.argv[2]), callbacks=extra)
    print("initial_step", result["initial_step"], "final_step", result["final_step"])
